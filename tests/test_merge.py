"""Merge and export: the standalone checkpoint equals base + adapter."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from qwenft.config import load_recipe

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke.yaml"
PROMPT = [{"role": "user", "content": "Extract as JSON: Bo is 7."}]


def _train(out: Path, *overrides) -> Path:
    from qwenft.trainer import train

    return train(load_recipe(SMOKE, [f"output_dir={out}", "training.max_steps=2", "training.save_steps=100",
                                     "lora.dropout=0.0", *overrides]))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir):
    return _train(tmp_path_factory.mktemp("tied"))


def _ids(tok):
    text = tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    return tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def _reference_logits(run: Path, ids):
    """Base + unmerged adapter, computed here independently of qwenft.merge."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    rec = json.loads((run / "run.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(rec["base"]["path"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, run / "adapter").eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_logits_equal_base_plus_adapter(tiny_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qwenft.merge import merge_run

    out = merge_run(tiny_run)
    tok = AutoTokenizer.from_pretrained(out)
    ids = _ids(tok)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    ref = _reference_logits(tiny_run, ids)
    assert torch.allclose(got, ref, atol=1e-4, rtol=0), float((got - ref).abs().max())
    # the adapter really changed the model, so the comparison is not vacuous
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        assert float((base(input_ids=ids).logits - ref).abs().max()) > 1e-3
    # tying and parameter count kept
    assert merged.config.tie_word_embeddings is True
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in base.parameters())
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [151645, 151643]
    for name in ("config.json", "tokenizer.json", "chat_template.jinja", "README.md", "qwenft_merge.json"):
        assert (out / name).is_file(), name
    rec = json.loads((tiny_run / "merge_parity.json").read_text())
    assert rec["parity"]["exported"]["max_abs_logit_diff"] < 1e-3
    assert rec["parity"]["exported"]["greedy_token_agreement"] == 1.0
    assert rec["parity"]["template_parity"]["equal"] is True


def test_model_card_says_what_was_done(tiny_run):
    from qwenft.merge import merge_run

    out = merge_run(tiny_run, out=tiny_run / "card-check")
    card = (out / "README.md").read_text()
    run = json.loads((tiny_run / "run.json").read_text())
    assert card.startswith("---\nlicense: apache-2.0")
    assert "TEST MODEL" in card  # the base actually used, never presented as the Hub model
    assert "base_model: Qwen/Qwen2.5-0.5B-Instruct" not in card
    assert run["data"]["sources"][0]["fingerprint"][:16] in card
    assert "## Merge parity" in card and "max |logit diff|" in card
    assert "## Mask audit" in card and "## Recipe (resolved)" in card and "run_name: smoke" in card
    assert '"transformers"' in card and "Apache-2.0" in card
    assert "r=16" in card


def test_untied_base_stays_untied_and_shards(tmp_path, tiny_untied_dir):
    from transformers import AutoModelForCausalLM

    from qwenft.merge import merge_run

    run = _train(tmp_path, "model.base_model=tiny-random-untied")
    out = merge_run(run, max_shard_size="20MB")
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) >= 3, shards
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    m = AutoModelForCausalLM.from_pretrained(out)
    assert m.config.tie_word_embeddings is False
    assert m.lm_head.weight.data_ptr() != m.model.embed_tokens.weight.data_ptr()
    base = AutoModelForCausalLM.from_pretrained(tiny_untied_dir)
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in base.parameters())


def test_qlora_merges_onto_original_and_records_both(tmp_path, tiny_model_dir):
    from qwenft.merge import merge_run

    run = _train(tmp_path, "quantization.load_in_4bit=true", "quantization.compute_dtype=fp32")
    out = merge_run(run)
    rec = json.loads((out / "qwenft_merge.json").read_text())
    par = rec["parity"]
    assert rec["qlora"] is True and par["merged_onto"] == "original"
    assert par["other_merge"]["merged_onto"] == "quantized"
    assert par["exported"]["max_abs_logit_diff"] < 1e-3  # the merge itself is exact
    # Onto the 4-bit round-tripped weights, the merge reproduces what was trained more closely.
    assert par["other_merge"]["max_abs_logit_diff"] < par["vs_trained_4bit"]["max_abs_logit_diff"]
    assert "merged onto the **original** base weights" in (out / "README.md").read_text()
    out_q = merge_run(run, out=run / "merged-q", onto="quantized")
    assert json.loads((out_q / "qwenft_merge.json").read_text())["parity"]["merged_onto"] == "quantized"


def test_custom_system_policy_is_baked_into_the_exported_template(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from qwenft.merge import merge_run

    run = _train(tmp_path, "data.system_prompt='You extract JSON.'")
    out = merge_run(run)
    tok = AutoTokenizer.from_pretrained(out)
    text = tok.apply_chat_template(PROMPT, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou extract JSON.<|im_end|>")
    assert json.loads((out / "qwenft_merge.json").read_text())["parity"]["template_parity"]["equal"]


def test_interrupted_merge_leaves_nothing_and_rerun_succeeds(tmp_path, tiny_run):
    out = tmp_path / "merged"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "qwenft.cli", "merge", str(tiny_run), "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list(tmp_path.glob(".merged.tmp-*/*.safetensors")):
        time.sleep(0.05)
    assert list(tmp_path.glob(".merged.tmp-*")), "merge never started writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    done = subprocess.run([sys.executable, "-m", "qwenft.cli", "merge", str(tiny_run), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "qwenft_merge.json").is_file()
    assert not list(tmp_path.glob(".merged.tmp-*"))  # the stale temp dir was cleared


def test_merge_refuses_an_unfinished_run(tmp_path):
    from qwenft.errors import UserError
    from qwenft.merge import merge_run

    (tmp_path / "run.json").write_text(json.dumps({"status": "interrupted"}))
    with pytest.raises(UserError, match="finish training first"):
        merge_run(tmp_path)
    with pytest.raises(UserError, match="not a qwenft run directory"):
        merge_run(tmp_path / "nope")


@pytest.mark.slow
def test_stand_in_merge_after_real_steps(tmp_path, stand_in_dir):
    """Real weights: a bf16 export of the stand-in after 2 LoRA steps stays within threshold."""
    from transformers import AutoModelForCausalLM

    from qwenft.merge import merge_run

    run = _train(tmp_path, "model.base_model=stand-in", "training.batch_size=2", "data.max_length=512",
                 "data.sources=[{path: %s, weight: 0.01}]" % (REPO / "recipes/data/json_extraction_train.jsonl"),
                 "training.learning_rate=1e-4")
    out = merge_run(run, dtype="bf16")
    rec = json.loads((out / "qwenft_merge.json").read_text())
    par = rec["parity"]
    assert "rounded once, in place" in par["merge_precision"]  # bf16 base, bf16 export: the lean merge
    assert par["exported"]["max_abs_logit_diff"] < par["threshold"]
    assert par["exported"]["greedy_token_agreement"] > 0.9
    assert par["generation"]["stopped_at_im_end"] >= 2  # a real instruct model stops at <|im_end|>
    assert par["parameters"]["tied_embeddings"] is False
    assert par["parameters"]["merged"] == par["parameters"]["base"] > 600_000_000
    assert "STAND-IN" in (out / "README.md").read_text()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16"


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_lean_bf16_merge_is_bit_identical_to_fp32_merge(tmp_path, tiny_model_dir, tiny_untied_dir, tied):
    """A bf16-stored base merged in bf16 (half the memory) gives the very weights of the fp32
    merge rounded once to bf16, and fp32_compute gives the very logits of an fp32 load."""
    import shutil

    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from qwenft.merge import _logits, fp32_compute, merge_run, stored_dtype

    src = tiny_model_dir if tied else tiny_untied_dir
    base16 = tmp_path / "base-bf16"
    AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).save_pretrained(base16)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(Path(src) / name, base16 / name)
    assert stored_dtype(str(base16)) == torch.bfloat16
    run = _train(tmp_path / "run", f"model.base_model={base16}", "model.dtype=fp32",
                 "training.learning_rate=5e-2")

    out = merge_run(run, dtype="bf16")
    rec = json.loads((out / "qwenft_merge.json").read_text())
    assert "rounded once, in place" in rec["parity"]["merge_precision"]  # the lean path ran
    assert "in_memory_fp32" not in rec["parity"]

    # the fp32 way, by hand: upcast base, merge, round once
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base16, dtype=torch.float32),
                                    run / "adapter").merge_and_unload().to(torch.bfloat16)
    want = {k: v for k, v in ref.state_dict().items()}
    got = {}
    for f in out.glob("*.safetensors"):
        got.update(load_file(f))
    before = AutoModelForCausalLM.from_pretrained(base16, dtype=torch.bfloat16).state_dict()
    for k, v in got.items():
        assert v.dtype == torch.bfloat16, k
        assert torch.equal(v, want[k]), k
    # the adapter moved the weights: the comparison is not vacuous
    assert sum(not torch.equal(got[k], before[k]) for k in got if k.endswith("q_proj.weight")) > 0

    # fp32 compute on bf16 storage == an fp32 load, exactly; and the storage is untouched after
    ids = [torch.tensor([[151644, 872, 198, 9707, 151645, 198, 151644, 77091, 198]])]
    m16 = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    m32 = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    (a,), (b,) = list(_logits(m16, ids)), list(_logits(m32, ids))
    assert torch.equal(a, b)
    assert all(p.dtype == torch.bfloat16 for p in m16.parameters())
    assert not any(hasattr(m, "parametrizations") for m in m16.modules())
    with fp32_compute(m16):
        assert m16.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32  # upcast when used
        assert m16.lm_head.weight.dtype == torch.bfloat16  # the head is upcast slice by slice
    assert "forward" not in vars(m16.lm_head)  # and restored on exit
