"""`qwenft bench`: the arithmetic it reports, and one quick end-to-end run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qwenft import bench

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- token counting


def test_counts_padded_batch():
    pad = 7
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, pad, pad]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    labels = torch.tensor([[-100, -100, 3, 4], [-100, 6, -100, -100]])
    c = bench.batch_token_counts({"input_ids": ids, "attention_mask": mask, "labels": labels}, pad)
    assert c == {"processed": 8, "real": 6, "padding": 2, "trained": 3, "sequences": 2}
    assert bench.padding_fraction(c["padding"], c["processed"]) == pytest.approx(0.25)


def test_counts_padding_free_batch():
    # three examples (lengths 3, 2, 4) packed in one row, no attention mask
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9]])
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    labels = torch.tensor([[-100, 2, 3, -100, 5, -100, -100, 8, 9]])
    c = bench.batch_token_counts({"input_ids": ids, "position_ids": pos, "labels": labels}, pad_token_id=0)
    assert c == {"processed": 9, "real": 9, "padding": 0, "trained": 5, "sequences": 3}


def test_counts_padding_free_with_pad_to_multiple_tail():
    pad = 0
    ids = torch.tensor([[1, 2, 3, 4, 5, pad, pad, pad]])
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 0]])
    labels = torch.tensor([[-100, 2, 3, -100, 5, -100, -100, -100]])
    c = bench.batch_token_counts({"input_ids": ids, "position_ids": pos, "labels": labels}, pad)
    assert c["processed"] == 8 and c["real"] == 5 and c["padding"] == 3 and c["sequences"] == 2
    assert c["trained"] == 3
    assert bench.padding_fraction(3, 8) == pytest.approx(0.375)


def test_counts_without_mask_or_positions_and_no_labels():
    c = bench.batch_token_counts({"input_ids": torch.ones(2, 5, dtype=torch.long)})
    assert c == {"processed": 10, "real": 10, "padding": 0, "trained": 0, "sequences": 2}


def test_padding_fraction_empty():
    assert bench.padding_fraction(0, 0) == 0.0


# --------------------------------------------------------------------------- FLOPs, MFU, ratios


def test_flop_formula_lora_vs_full():
    assert bench.training_flops_per_token(1000) == 4000
    assert bench.training_flops_per_token(1000, "full") == 6000
    with pytest.raises(ValueError):
        bench.training_flops_per_token(1000, "qlora?")


def test_mfu_and_ratio():
    # 100 tokens/s * 4 * 1e9 = 4e11 FLOP/s against a 1e12 peak
    assert bench.mfu(100.0, 10**9, 1e12) == pytest.approx(0.4)
    assert bench.mfu(100.0, 10**9, 1e12, "full") == pytest.approx(0.6)
    assert bench.mfu(100.0, 10**9, 0.0) == 0.0
    assert bench.ratio(3.0, 2.0) == pytest.approx(1.5)
    assert bench.ratio(3.0, 0.0) is None and bench.ratio(None, 2.0) is None


def test_matmul_param_count_tied_and_untied():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    kw = dict(vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
              num_attention_heads=2, num_key_value_heads=1)
    tied = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **kw))
    untied = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=False, **kw))
    t, u = bench.matmul_param_count(tied), bench.matmul_param_count(untied)
    assert t["tied"] and not u["tied"]
    assert t["n_flops"] == t["total"]  # the shared matrix counts once, as the head
    assert u["n_flops"] == u["total"] - 100 * 8  # input lookup table excluded, output matrix counted
    assert t["n_flops"] == u["n_flops"]
    # an attached LoRA adapter does not change N
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(untied, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert bench.matmul_param_count(peft_model.get_base_model()) == u


def test_qwen05b_shape_has_the_published_parameter_count():
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        m = Qwen2ForCausalLM(bench.qwen05b_config())
    n = bench.matmul_param_count(m)
    assert n["tied"] and n["total"] == 494_032_768


def test_summarize_steps_excludes_warmup():
    def step(i, t_begin, t_end, real, processed, trained, cpu_end):
        return {"step": i, "t_begin": t_begin, "t_end": t_end, "real": real, "processed": processed,
                "padding": processed - real, "trained": trained, "sequences": 4, "cpu_end": cpu_end}

    steps = [step(1, 0.0, 10.0, 999, 999, 9, 20.0), step(2, 10.5, 12.0, 100, 120, 50, 23.0),
             step(3, 12.5, 14.0, 300, 380, 150, 26.0)]
    s = bench.summarize_steps(steps, warmup=1)
    assert s["timed_steps"] == 2 and s["seconds"] == pytest.approx(4.0)
    assert s["real_tokens_per_s"] == pytest.approx(100.0)
    assert s["trained_tokens_per_s"] == pytest.approx(50.0)
    assert s["padding_fraction"] == pytest.approx(100 / 500)
    assert s["compute_step_s"] == pytest.approx(1.5)
    assert s["cpu_util"] == pytest.approx(6.0 / 4.0)  # 6 CPU seconds over 4 wall seconds
    with pytest.raises(ValueError):
        bench.summarize_steps(steps, warmup=0)


# --------------------------------------------------------------------------- generated data


def test_lognormal_lengths_bounds_and_determinism():
    a = bench.lognormal_lengths(500, seed=3, median=180, sigma=0.9, lo=30, hi=1000)
    b = bench.lognormal_lengths(500, seed=3, median=180, sigma=0.9, lo=30, hi=1000)
    c = bench.lognormal_lengths(500, seed=4, median=180, sigma=0.9, lo=30, hi=1000)
    assert a == b and a != c
    assert len(a) == 500 and min(a) >= 30 and max(a) <= 1000
    med = sorted(a)[250]
    assert 130 < med < 240  # about the requested median
    assert max(a) > 600 and min(a) < 60  # a real spread, long tail included
    with pytest.raises(ValueError):
        bench.lognormal_lengths(3, seed=0, lo=10, hi=5)


def test_conversations_deterministic_multi_turn_and_close_to_target(qwen_tokenizer):
    rows = bench.make_conversations(60, seed=42)
    assert rows == bench.make_conversations(60, seed=42)
    assert any(len(r["messages"]) > 2 for r in rows) and any(len(r["messages"]) == 2 for r in rows)
    for r in rows:
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        assert all(m["content"].strip() for m in r["messages"])
    targets = bench.lognormal_lengths(60, seed=42)
    for r, t in zip(rows, targets):
        text = qwen_tokenizer.apply_chat_template(r["messages"], tokenize=False)
        n = len(qwen_tokenizer(text, add_special_tokens=False)["input_ids"])
        assert abs(n - t) <= max(15, 0.1 * t), (n, t)


# --------------------------------------------------------------------------- end to end (quick)


EXPECTED_SIDES = {"qwenft", "trl_defaults", "trl_fp32", "qwenft_padded_trl", "qwenft_packed_trl",
                  "qwenft_padded_native"}


def test_quick_bench_end_to_end(tmp_path, tiny_model_dir):
    out = tmp_path / "bench"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "qwenft.cli", "bench", "--quick", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    res = json.loads(last)
    assert res["mode"] == "quick"
    for key in ("machine", "matmul_peak", "dataset", "training", "targets", "flops_formula"):
        assert key in res
    assert res["matmul_peak"]["gflops"] > 0
    tiny = res["training"]["tiny"]
    assert set(tiny["sides"]) == EXPECTED_SIDES
    for name, side in tiny["sides"].items():
        f = side["figures"]
        assert f["real_tokens_per_s"] > 0 and f["trained_tokens_per_s"] > 0, name
        assert f["step_s"] > 0 and side["peak_rss_mb"] > 0 and f["mfu"] > 0, name
        assert f["cpu_util"] is not None and f["cpu_util"] > 0, name
        assert side["same_batches_as_qwenft"], name  # same data, order and steps on every side
    q = tiny["sides"]["qwenft"]
    assert q["figures"]["padding_fraction"] == 0.0 and q["padding_free"] and q["native_loss"]
    assert tiny["sides"]["trl_defaults"]["figures"]["padding_fraction"] > 0
    assert not tiny["sides"]["trl_defaults"]["assistant_only_loss"]
    assert tiny["ratio_vs_trl_defaults"] > 0 and tiny["ratio_vs_trl_fp32"] > 0
    assert tiny["n_params"]["n_flops"] > 0
    assert {t["target"].split(":")[0] for t in res["targets"]} >= {"eval", "merge"}
    saved = json.loads((out / "bench.json").read_text())
    assert saved["training"]["tiny"]["ratio_vs_trl_defaults"] == pytest.approx(tiny["ratio_vs_trl_defaults"])
    md = (out / "bench.md").read_text()
    assert "| side |" in md and "Targets" in md
