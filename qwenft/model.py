"""Load the base model and tokenizer, attach LoRA / QLoRA adapters."""

from __future__ import annotations

import os

import torch

from .config import Recipe

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def pick_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        # CPU: fp32 (bf16 matmuls are slower on most CPUs and less exact); GPU: bf16 where supported.
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return DTYPES[name]


def device_of(recipe: Recipe) -> str:
    return "cuda" if torch.cuda.is_available() and not recipe.training.use_cpu else "cpu"


def load_tokenizer(path: str, recipe: Recipe | None = None):
    from transformers import AutoTokenizer

    kw = {}
    if recipe is not None:
        kw = {"trust_remote_code": recipe.model.trust_remote_code, "revision": recipe.model.revision}
    tok = AutoTokenizer.from_pretrained(path, **kw)
    if tok.pad_token is None:
        tok.pad_token = "<|endoftext|>"
    return tok


def sharded_launch() -> bool:
    """The launcher asked for FSDP or DeepSpeed ZeRO-3: both shard the (4-bit) base weights too."""
    return (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
            or os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3")


def bnb_config(recipe: Recipe):
    from transformers import BitsAndBytesConfig

    q = recipe.quantization
    # FSDP / ZeRO-3 can only shard the packed 4-bit weights when their storage is a float dtype equal
    # to the model dtype (PEFT's QLoRA+FSDP / QLoRA+ZeRO-3 recipes); uint8 everywhere else.
    storage = DTYPES[q.compute_dtype] if sharded_launch() else torch.uint8
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                              bnb_4bit_use_double_quant=q.double_quant,
                              bnb_4bit_compute_dtype=DTYPES[q.compute_dtype],
                              bnb_4bit_quant_storage=storage)


def load_base_model(path: str, recipe: Recipe, device: str):
    from transformers import AutoModelForCausalLM

    dtype = pick_dtype(recipe.model.dtype, device)
    kw = dict(dtype=dtype, attn_implementation=recipe.model.attn_implementation,
              trust_remote_code=recipe.model.trust_remote_code, revision=recipe.model.revision,
              use_safetensors=True)
    if recipe.quantization.load_in_4bit:
        kw["quantization_config"] = bnb_config(recipe)
        if sharded_launch():
            # model dtype must equal the quant storage dtype; FSDP / DeepSpeed place the shards
            kw["dtype"] = DTYPES[recipe.quantization.compute_dtype]
        else:
            # one whole 4-bit copy per process, on that process's own GPU (DDP: not all on GPU 0)
            kw["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))} if device == "cuda" else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(path, **kw)
    model.config.use_cache = False
    return model


def lora_config(recipe: Recipe):
    from peft import LoraConfig

    lc = recipe.lora
    return LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                      target_modules=lc.target_modules, use_dora=lc.use_dora, use_rslora=lc.use_rslora,
                      modules_to_save=lc.modules_to_save or None, bias=lc.bias, task_type="CAUSAL_LM")


def attach_adapter(model, recipe: Recipe):
    from peft import get_peft_model, prepare_model_for_kbit_training

    sharded_4bit = recipe.quantization.load_in_4bit and sharded_launch()
    # Under FSDP / ZeRO-3 (as TRL does for "sharded QLoRA"): no fp32 up-cast of norms/embeddings and
    # adapters kept in the storage dtype, so every sharded parameter has one dtype.
    if recipe.quantization.load_in_4bit and recipe.quantization.prepare_kbit and not sharded_4bit:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=recipe.training.gradient_checkpointing)
    elif recipe.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return get_peft_model(model, lora_config(recipe), autocast_adapter_dtype=not sharded_4bit)
