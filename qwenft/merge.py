"""Merge a run's LoRA adapter into its base and export a standalone checkpoint.

The merge is computed in fp32 (each merged weight is rounded once, to the export
dtype) and checked: logits of the exported checkpoint, reloaded from disk, are
compared with the unmerged base + adapter on fixed prompts and the run's own
validation examples. Written to a temp dir beside the target, renamed when done.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .base import QWEN_GENERATION_CONFIG, library_versions, log
from .errors import UserError
from .model import DTYPES
from .runs import read_json, replace_dir, temp_dir_beside, write_json_atomic, write_text_atomic
from .template import QWEN_DEFAULT_SYSTEM, apply_system_policy, export_chat_template, render

FIXED_PROMPTS = [
    [{"role": "user", "content": "Give the name and age of this person as JSON: Ana Ruiz is 34 years old."}],
    [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "List three prime numbers."}],
]
PARITY_MAX_TOKENS = 96  # per prompt: enough to cover the answer, bounded logits memory
# Max |logit diff| allowed, by export dtype, when the recipe leaves it at the default.
# fp32 export: only float reassociation differs. bf16/fp16: each merged weight is
# rounded once (relative 2^-9 / 2^-12); on the 24-layer stand-in a bf16 export moved the
# largest of ~10^8 logits by 0.89 (measured), so the bf16 bound sits above that tail.
DEFAULT_THRESHOLDS = {"fp32": 1e-3, "fp16": 0.5, "bf16": 2.0}


def _load_run(run_dir: Path) -> dict:
    rec_path = run_dir / "run.json"
    if not rec_path.is_file():
        raise UserError(f"{run_dir} is not a qwenft run directory (no run.json). Give the directory "
                        f"`qwenft train` printed, e.g. outputs/<run_name>.")
    rec = read_json(rec_path)
    if rec.get("status") != "completed" or not (run_dir / "adapter" / "adapter_config.json").is_file():
        raise UserError(f"Run {run_dir} has status '{rec.get('status')}' and no complete adapter; finish "
                        f"training first (rerun `qwenft train` with resume: auto).")
    return rec


def parity_conversations(run_dir: Path, policy: str) -> list[list[dict]]:
    convs = [list(c) for c in FIXED_PROMPTS]
    vs = run_dir / "val_samples.jsonl"
    if vs.is_file():
        for line in vs.read_text().splitlines():
            convs.append(json.loads(line)["messages"])
    return [apply_system_policy(c, policy) for c in convs]


def _encode(tok, convs) -> list[torch.Tensor]:
    out = []
    for c in convs:
        text = render(tok, c, add_generation_prompt=c[-1]["role"] != "assistant")
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :PARITY_MAX_TOKENS]
        out.append(ids)
    return out


@torch.no_grad()
def _logits(model, batches) -> list[torch.Tensor]:
    model.eval()
    return [model(input_ids=ids, use_cache=False).logits[0].float() for ids in batches]


def _compare(ref, got) -> dict:
    max_diff = max(float((a - b).abs().max()) for a, b in zip(ref, got))
    agree = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(ref, got))
    total = sum(a.shape[0] for a in ref)
    return {"max_abs_logit_diff": max_diff, "greedy_token_agreement": agree / total, "positions": total}


def _base_model(path: str, dtype=torch.float32, quant=None):
    from transformers import AutoModelForCausalLM

    kw = {"dtype": dtype, "use_safetensors": True}
    if quant is not None:
        kw["quantization_config"] = quant
        kw["device_map"] = {"": "cpu"}
    return AutoModelForCausalLM.from_pretrained(path, **kw)


def _roundtrip_4bit(model, q) -> None:
    """Replace each weight bitsandbytes would quantise by its 4-bit round trip."""
    import bitsandbytes.functional as F

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and not name.endswith("lm_head"):
            w = mod.weight.data
            qw, state = F.quantize_4bit(w.to(DTYPES[q["compute_dtype"]]), quant_type=q["quant_type"],
                                        compress_statistics=q["double_quant"])
            mod.weight.data = F.dequantize_4bit(qw, state).to(w.dtype)


def _param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_stops(model, tok, convs) -> dict:
    eos = [tok.convert_tokens_to_ids("<|im_end|>")]
    stops = 0
    for c in convs:
        text = render(tok, c, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        out = model.generate(input_ids=ids, max_new_tokens=48, do_sample=False, eos_token_id=eos,
                             pad_token_id=tok.pad_token_id, repetition_penalty=1.0)
        stops += int(out[0, -1].item() == eos[0])
    return {"prompts": len(convs), "stopped_at_im_end": stops}


def merge_run(run_dir: Path, out: Path | None = None, dtype: str | None = None, onto: str | None = None,
              max_shard_size: str | None = None) -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    t0 = time.time()
    run_dir = Path(run_dir).resolve()
    rec = _load_run(run_dir)
    recipe = rec["recipe"]
    mcfg = recipe["merge"]
    dtype = dtype or mcfg["dtype"]
    onto = onto or mcfg["qlora_merge_onto"]
    max_shard_size = max_shard_size or mcfg["max_shard_size"]
    threshold = mcfg.get("parity_threshold")
    if threshold is None or threshold == 0.05:  # 0.05 is the recipe default: pick by dtype
        threshold = DEFAULT_THRESHOLDS[dtype]
    out = Path(out) if out else run_dir / "merged"
    base = rec["base"]
    base_path = base["path"]
    policy = recipe["data"]["system_prompt"]
    q = recipe["quantization"]
    is_qlora = bool(q["load_in_4bit"])
    log(f"merging {run_dir / 'adapter'} into {base['label']}")

    tok = AutoTokenizer.from_pretrained(run_dir / "adapter")
    convs = parity_conversations(run_dir, policy)
    batches = _encode(tok, convs)

    # Reference: the model as trained (QLoRA: the 4-bit base) plus the unmerged adapter.
    figures = {}
    if is_qlora:
        from transformers import BitsAndBytesConfig

        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q["quant_type"],
                                 bnb_4bit_use_double_quant=q["double_quant"],
                                 bnb_4bit_compute_dtype=DTYPES[q["compute_dtype"]])
        qbase = _base_model(base_path, torch.float32, bnb)
        ref_trained = _logits(PeftModel.from_pretrained(qbase, run_dir / "adapter"), batches)
        del qbase
    model = _base_model(base_path, torch.float32)
    base_params, base_tied = _param_count(model), bool(model.config.tie_word_embeddings)
    if is_qlora and onto == "quantized":
        _roundtrip_4bit(model, q)
    model = PeftModel.from_pretrained(model, run_dir / "adapter")
    # Gate reference: the same base weights the merge goes onto, plus the unmerged adapter.
    ref = _logits(model, batches)
    merged = model.merge_and_unload()
    del model
    figures["in_memory_fp32"] = _compare(ref, _logits(merged, batches))
    if _param_count(merged) != base_params or bool(merged.config.tie_word_embeddings) != base_tied:
        raise RuntimeError(f"merged model has {_param_count(merged)} parameters (tied="
                           f"{merged.config.tie_word_embeddings}); base has {base_params} (tied={base_tied})")

    tmp = temp_dir_beside(out)
    try:
        merged = merged.to(DTYPES[dtype])
        merged.config.use_cache = True
        merged.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
        del merged
        tok.chat_template = export_chat_template(tok.chat_template, policy, QWEN_DEFAULT_SYSTEM)
        tok.save_pretrained(tmp)
        if tok.chat_template and not (tmp / "chat_template.jinja").is_file():
            write_text_atomic(tmp / "chat_template.jinja", tok.chat_template)
        GenerationConfig(**QWEN_GENERATION_CONFIG).save_pretrained(tmp)

        # Parity on what was written: reload from disk, compute in fp32.
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, use_safetensors=True)
        figures["exported"] = _compare(ref, _logits(reloaded, batches))
        figures["exported"]["dtype"] = dtype
        figures["threshold"] = threshold
        figures["reference"] = (f"{onto} base weights + unmerged adapter (fp32)" if is_qlora
                                else "base + adapter (unmerged, fp32)")
        if is_qlora:
            # How close each merge option comes to the model as trained (4-bit base + adapter).
            figures["merged_onto"] = onto
            figures["vs_trained_4bit"] = _compare(ref_trained, _logits(reloaded, batches))
            figures["vs_trained_4bit"]["merged_onto"] = onto
            figures["other_merge"] = _other_qlora_merge(base_path, run_dir, q, onto, ref_trained, batches)
        saved_tok = AutoTokenizer.from_pretrained(tmp)
        figures["template_parity"] = template_parity(saved_tok, tok_train=AutoTokenizer.from_pretrained(run_dir / "adapter"),
                                                     run_dir=run_dir, policy=policy)
        figures["generation"] = _check_stops(reloaded, saved_tok, convs[:3])
        figures["parameters"] = {"merged": _param_count(reloaded), "base": base_params,
                                 "tied_embeddings": bool(reloaded.config.tie_word_embeddings)}
        del reloaded
        diff = figures["exported"]["max_abs_logit_diff"]
        if diff > threshold:
            raise UserError(f"Merge parity failed: max |logit diff| {diff:.4g} between the exported {dtype} "
                            f"checkpoint and base + adapter exceeds merge.parity_threshold={threshold}. "
                            f"Nothing was written to {out}. Export in fp32 or raise the threshold.")
        if not figures["template_parity"]["equal"]:
            raise UserError(f"Template parity failed: the exported tokenizer renders the run's validation "
                            f"examples differently from training ({figures['template_parity']}). Nothing was "
                            f"written to {out}.")
        record = {"run_dir": str(run_dir), "base": base, "dtype": dtype, "max_shard_size": max_shard_size,
                  "qlora": is_qlora, "qlora_merge_onto": onto if is_qlora else None, "parity": figures,
                  "system_prompt_policy": policy, "library_versions": library_versions(),
                  "seconds": round(time.time() - t0, 2)}
        write_json_atomic(tmp / "qwenft_merge.json", record)
        from .card import write_model_card

        write_model_card(tmp, rec, record, run_dir)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)
    write_json_atomic(run_dir / "merge_parity.json", record)
    log(f"merged checkpoint written to {out} (max |logit diff| {figures['exported']['max_abs_logit_diff']:.3g}, "
        f"greedy agreement {figures['exported']['greedy_token_agreement']:.2%}, {record['seconds']} s)")
    return out


def _other_qlora_merge(base_path, run_dir, q, onto, ref, batches) -> dict:
    """The parity figure of the merge option not chosen, so the card can compare both."""
    from peft import PeftModel

    other = "quantized" if onto == "original" else "original"
    m = _base_model(base_path, torch.float32)
    if other == "quantized":
        _roundtrip_4bit(m, q)
    merged = PeftModel.from_pretrained(m, run_dir / "adapter").merge_and_unload()
    fig = _compare(ref, _logits(merged, batches))
    fig["merged_onto"] = other
    return fig


def template_parity(tok_saved, tok_train, run_dir: Path, policy: str) -> dict:
    """The exported template, without the policy applied, renders what training rendered with it."""
    vs = run_dir / "val_samples.jsonl"
    rows = [json.loads(x) for x in vs.read_text().splitlines()] if vs.is_file() else []
    rows += [{"messages": c + [{"role": "assistant", "content": "ok"}], "tools": None} for c in FIXED_PROMPTS]
    mismatches = 0
    for r in rows:
        trained = tok_train(render(tok_train, apply_system_policy(r["messages"], policy), r.get("tools")),
                            add_special_tokens=False)["input_ids"]
        exported = tok_saved(render(tok_saved, r["messages"], r.get("tools")), add_special_tokens=False)["input_ids"]
        mismatches += int(trained != exported)
    return {"examples": len(rows), "mismatches": mismatches, "equal": mismatches == 0}
