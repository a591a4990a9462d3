"""Merge a run's LoRA adapter into its base and export a standalone checkpoint.

The merge is computed in fp32 (each merged weight is rounded once, to the export
dtype) and checked: logits of the exported checkpoint, reloaded from disk, are
compared with the unmerged base + adapter on fixed prompts and the run's own
validation examples. Written to a temp dir beside the target, renamed when done.
"""

from __future__ import annotations

import functools
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
# rounded once (relative 2^-9 / 2^-12). The figure is the max over ~10^8 logits, a tail:
# six bf16 exports of stand-in runs measured 0.13, 0.21, 0.89, 1.65, 1.65 and 2.73 (the
# last after 2 LoRA steps on another data order) with greedy agreement >= 97%, so the bf16
# bound sits at 4.0; the merge arithmetic itself is gated exactly by the fp32 tests.
DEFAULT_THRESHOLDS = {"fp32": 1e-3, "fp16": 0.5, "bf16": 4.0}


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


class _Upcast(torch.nn.Module):
    def forward(self, w):
        return w.float()


# A Linear with at least this many output rows (the 152k-row output head) is upcast in slices
# of this many rows instead of whole: 58 MB of fp32 at a time instead of 545 MB, same logits.
HEAD_SLICE_ROWS = 16384


def _sliced_fp32_linear(mod, x):
    w, b = mod.weight, mod.bias
    out = torch.empty(*x.shape[:-1], w.shape[0], dtype=torch.float32, device=x.device)
    for i in range(0, w.shape[0], HEAD_SLICE_ROWS):
        j = i + HEAD_SLICE_ROWS
        out[..., i:j] = torch.nn.functional.linear(x.float(), w[i:j].float(), None if b is None else b[i:j].float())
    return out


class fp32_compute:
    """Run a bf16/fp16-STORED model's forward in fp32, without an fp32 copy of its weights.

    Every bf16 value is exactly an fp32 value, so upcasting each Linear weight and bias when
    used (torch parametrizations) and each embedding's output gives the same logits as
    the model loaded in fp32, at half the resident memory (the 0.5B stand-in: 1.3 GB
    instead of 2.5 GB; the cost is a transient fp32 copy of one weight at a time, and of
    the 152k-row output head one slice at a time). Removed on exit; the stored weights
    are untouched.
    """

    def __init__(self, model):
        self.model = model
        self.linears, self.hooks, self.sliced = [], [], []

    def __enter__(self):
        from torch.nn.utils import parametrize

        for mod in self.model.modules():
            w = getattr(mod, "weight", None)
            if not isinstance(w, torch.Tensor) or not w.is_floating_point() or w.dtype == torch.float32:
                continue
            if isinstance(mod, torch.nn.Linear) and w.shape[0] >= 2 * HEAD_SLICE_ROWS:
                mod.forward = functools.partial(_sliced_fp32_linear, mod)  # instance attr shadows the class's
                self.sliced.append(mod)
            elif isinstance(mod, torch.nn.Linear):
                names = ["weight"] + (["bias"] if mod.bias is not None else [])
                for name in names:
                    parametrize.register_parametrization(mod, name, _Upcast(), unsafe=True)
                self.linears.append((mod, names))
            elif isinstance(mod, torch.nn.Embedding):
                self.hooks.append(mod.register_forward_hook(lambda m, i, o: o.float()))
        return self.model

    def __exit__(self, *exc):
        from torch.nn.utils import parametrize

        for mod, names in self.linears:
            for name in names:
                parametrize.remove_parametrizations(mod, name, leave_parametrized=False)
        for h in self.hooks:
            h.remove()
        for mod in self.sliced:
            del mod.forward
        return False


# Parity sequences per forward. Each forward of a bf16-stored model upcasts every weight once
# (~0.4 s for the stand-in), so grouping amortises that; each group holds its logits
# (rows x <=96 x 152k fp32: ~230 MB for 4), so larger groups trade memory for time.
PARITY_GROUP = 4


@torch.no_grad()
def _logits(model, batches):
    """Logits per parity sequence, in fp32 whatever the storage dtype, PARITY_GROUP at a time.

    Right padding without a mask: in a causal model the real positions never attend to the
    pads after them. The reference and the checked model go through the same grouping.
    """
    model.eval()
    with fp32_compute(model):
        for k in range(0, len(batches), PARITY_GROUP):
            group = batches[k:k + PARITY_GROUP]
            ids = torch.zeros((len(group), max(x.shape[1] for x in group)), dtype=torch.long)
            for r, x in enumerate(group):
                ids[r, :x.shape[1]] = x[0]
            logits = model(input_ids=ids, use_cache=False).logits.float()
            for r, x in enumerate(group):
                yield logits[r, :x.shape[1]].clone()  # a copy: the group's tensor is freed
            del logits


def _compare(ref, got) -> dict:
    """ref: a list of logits; got: any iterable of logits (compared as they come, never all held)."""
    max_diff, agree, total = 0.0, 0, 0
    for a, b in zip(ref, got, strict=True):
        max_diff = max(max_diff, float((a - b).abs().max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += a.shape[0]
    return {"max_abs_logit_diff": max_diff, "greedy_token_agreement": agree / total, "positions": total}


def stored_dtype(path: str) -> torch.dtype | None:
    """The dtype a checkpoint's weights are stored in, from its config.json (None if unstated)."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = cfg.get("dtype") or cfg.get("torch_dtype")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(name)


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
    """Greedy answers to `convs`, one left-padded batch (a third of the decode steps of one by
    one); counts the answers that end with <|im_end|> within 48 tokens."""
    from .generate import _left_pad

    eos = tok.convert_tokens_to_ids("<|im_end|>")
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    seqs = [tok(render(tok, c, add_generation_prompt=True), add_special_tokens=False)["input_ids"] for c in convs]
    ids, mask = _left_pad(seqs, pad)
    width = ids.shape[1]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=48, do_sample=False,
                             eos_token_id=[eos], pad_token_id=pad, repetition_penalty=1.0,
                             temperature=None, top_p=None, top_k=None)
    stops = sum(int(eos in row) for row in out[:, width:].tolist())
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
        ref_trained = list(_logits(PeftModel.from_pretrained(qbase, run_dir / "adapter"), batches))
        del qbase
    # Lean merge: when the base is stored in the export dtype (the Hub model and the stand-in
    # are bf16), keep it in that dtype. PEFT's merge adds the fp32 LoRA delta in place; torch
    # computes a bf16 += fp32 add in fp32 and rounds once, so every merged weight is
    # bit-identical to the fp32 merge rounded to bf16 (tested), at half the memory. DoRA
    # (weight norms) and QLoRA (4-bit reference, round trips) keep the fp32 path.
    store = stored_dtype(base_path)
    use_dora = bool(json.loads((run_dir / "adapter" / "adapter_config.json").read_text()).get("use_dora"))
    lean = (not is_qlora and not use_dora and store in (torch.bfloat16, torch.float16)
            and store == DTYPES[dtype])
    model = _base_model(base_path, store if lean else torch.float32)
    base_params, base_tied = _param_count(model), bool(model.config.tie_word_embeddings)
    if is_qlora and onto == "quantized":
        _roundtrip_4bit(model, q)
    model = PeftModel.from_pretrained(model, run_dir / "adapter")
    # Gate reference: the same base weights the merge goes onto, plus the unmerged adapter.
    ref = list(_logits(model, batches))
    merged = model.merge_and_unload()
    del model
    figures["merge_precision"] = (f"{dtype} base + fp32 LoRA delta, added in fp32 and rounded once, in place"
                                  if lean else f"fp32 (base upcast), rounded once to {dtype} on export")
    if not lean:  # the fp32 merge before rounding: only float reassociation may differ
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

        # Parity on what was written: reload from disk as stored, compute in fp32.
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=DTYPES[dtype], use_safetensors=True)
        figures["exported"] = _compare(ref, _logits(reloaded, batches))
        del ref  # ~60 MB per parity sequence; nothing below needs it
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
        # As a user runs it: in the stored dtype (native bf16 decoding is ~3x faster here than
        # upcasting every weight at every step).
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
