"""Model cards for merged checkpoints: what base, what data, what settings, what was measured."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .report import md_table
from .runs import write_text_atomic

EVAL_START, EVAL_END = "<!-- qwenft:eval:start -->", "<!-- qwenft:eval:end -->"


def _base_section(base: dict) -> str:
    prov = base.get("provenance") or {}
    lines = [f"- **Base model actually used:** {base.get('label')}",
             f"- Requested in the recipe: `{base.get('requested')}` (resolved as `{base.get('kind')}`"
             + (", **fell back to the offline stand-in**" if base.get("fell_back") else "") + ")"]
    if base.get("kind") == "stand-in":
        lines.append("- This checkpoint is **not** derived from `Qwen/Qwen2.5-0.5B-Instruct`: it was fine-tuned "
                     "from the stand-in below, which shares its architecture, tokenizer and chat template.")
        for s in prov.get("source_packages", []):
            lines.append(f"  - `{s['package']}=={s['version']}` sha256 `{s['sha256']}`")
        if prov.get("gguf_sha256"):
            lines.append(f"  - GGUF sha256 `{prov['gguf_sha256']}` ({prov.get('gguf_file_type')})")
    return "\n".join(lines)


def write_model_card(out_dir: Path, run: dict, merge: dict, run_dir: Path) -> Path:
    recipe = run["recipe"]
    base = run["base"]
    is_hub = base.get("kind") in ("hub", "hub-cache")
    front = {"license": "apache-2.0", "library_name": "transformers", "pipeline_tag": "text-generation",
             "tags": ["qwenft", "qlora" if merge["qlora"] else "lora", "qwen2"]}
    if is_hub:
        front["base_model"] = base.get("requested")
    par = merge["parity"]
    rows = [["exported checkpoint (" + par["exported"]["dtype"] + ")", par["exported"]["max_abs_logit_diff"],
             par["exported"]["greedy_token_agreement"], par["exported"]["positions"]]]
    if par.get("in_memory_fp32"):  # only the fp32 merge path has an unrounded merged model to check
        m = par["in_memory_fp32"]
        rows.append(["in-memory fp32 merge", m["max_abs_logit_diff"], m["greedy_token_agreement"], m["positions"]])
    if par.get("other_merge"):
        v, o = par["vs_trained_4bit"], par["other_merge"]
        rows.append([f"vs the model as trained (4-bit base + adapter): merge onto {v['merged_onto']} "
                     "weights (exported)", v["max_abs_logit_diff"], v["greedy_token_agreement"], v["positions"]])
        rows.append([f"vs the model as trained: merge onto {o['merged_onto']} weights (not exported)",
                     o["max_abs_logit_diff"], o["greedy_token_agreement"], o["positions"]])
    audit = run.get("mask_audit", {})
    data = run.get("data", {})
    ds_rows = [[s["path"], s["format"], s["rows"], s["bad"], s["weight"], s["fingerprint"][:16]]
               for s in data.get("sources", [])]
    lora = recipe["lora"]
    q = recipe["quantization"]
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---",
        f"# {recipe['run_name']} (merged by qwenft)",
        "A standalone checkpoint: the LoRA adapter of this run merged into its base.",
        "## Base model", _base_section(base),
        "## Training data",
        md_table(["source", "format", "rows", "bad rows", "weight", "sha256 (16)"], ds_rows),
        f"System-prompt policy: `{recipe['data']['system_prompt']}` (the shipped chat template applies it "
        "by default, exactly as in training).",
        "## Adapter",
        f"- {'QLoRA' if merge['qlora'] else 'LoRA'}: r={lora['r']}, alpha={lora['alpha']}, dropout={lora['dropout']}, "
        f"targets={lora['target_modules']}, DoRA={lora['use_dora']}, rsLoRA={lora['use_rslora']}",
        (f"- 4-bit: {q['quant_type']}, double quant={q['double_quant']}, compute={q['compute_dtype']}; merged onto "
         f"the **{merge['qlora_merge_onto']}** base weights" if merge["qlora"] else "- Base loaded unquantised"),
        "## Mask audit",
        md_table(["trained tokens", "share trained", "examples with nothing trained", "assistant turns cut",
                  "every <|im_end|> trained"],
                 [[audit.get("trained_tokens"), audit.get("trained_fraction"), audit.get("empty_examples"),
                   audit.get("truncated_turns"), audit.get("im_end_all_trained")]]),
        "## Merge parity",
        f"Reference: {par['reference']}. Merge arithmetic: {par.get('merge_precision', 'fp32')}. "
        f"Threshold on max |logit diff|: {par['threshold']}.",
        md_table(["checkpoint", "max |logit diff|", "greedy token agreement", "positions"], rows),
        f"Template parity: {par['template_parity']['examples']} examples, {par['template_parity']['mismatches']} "
        f"mismatches. Greedy generation stopped at `<|im_end|>` on {par['generation']['stopped_at_im_end']} of "
        f"{par['generation']['prompts']} prompts (48-token budget). Parameters: {par['parameters']['merged']:,} "
        f"(base {par['parameters']['base']:,}), tied embeddings: {par['parameters']['tied_embeddings']}.",
        EVAL_START + "\n## Evaluation\nNot evaluated yet (`qwenft eval` adds results here).\n" + EVAL_END,
        "## Recipe (resolved)", "```yaml\n" + yaml.safe_dump(recipe, sort_keys=False) + "```",
        "## Library versions", "```json\n" + json.dumps(merge["library_versions"], indent=1) + "\n```",
        "## License", "Apache-2.0, as the Qwen2.5 0.5B instruct models.",
    ]
    path = Path(out_dir) / "README.md"
    write_text_atomic(path, "\n\n".join(parts) + "\n")
    return path


def add_eval_to_card(card: Path, markdown: str) -> None:
    """Replace the card's evaluation section with a results table."""
    card = Path(card)
    if not card.is_file():
        return
    text = card.read_text()
    if EVAL_START in text and EVAL_END in text:
        pre, rest = text.split(EVAL_START, 1)
        _, post = rest.split(EVAL_END, 1)
        text = pre + EVAL_START + "\n## Evaluation\n" + markdown.strip() + "\n" + EVAL_END + post
        write_text_atomic(card, text)
