"""qwenft.evaluate_json, qwenft.evaluation and qwenft.report_eval (the `qwenft eval` library)."""

import json

import pytest
import torch

from qwenft.errors import UserError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    """A run-like directory: a fresh LoRA adapter (non-zero init) on the tiny model + run.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qwenft.base import resolve_base

    rb = resolve_base("tiny-random")
    model = AutoModelForCausalLM.from_pretrained(rb.path)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                  init_lora_weights=False, task_type="CAUSAL_LM"))
    run = tmp_path_factory.mktemp("evalrun") / "run"
    peft_model.save_pretrained(run / "adapter")
    AutoTokenizer.from_pretrained(rb.path).save_pretrained(run / "adapter")
    recipe = {"data": {"system_prompt": "default"},
              "eval": {"suites": ["json_extraction"], "lm_eval_tasks": ["qwenft_json_extraction"],
                       "modes": ["unconstrained", "constrained"], "max_new_tokens": 16,
                       "batch_size": 4, "limit": 3, "slices": [], "compare_base": True}}
    (run / "run.json").write_text(json.dumps({"base": rb.record(), "recipe": recipe, "status": "done"}))
    return run


def test_default_settings_come_from_the_run(run_dir):
    from qwenft.evaluation import default_eval_settings_from_run

    s = default_eval_settings_from_run(run_dir)
    assert s["suites"] == ["json_extraction"] and s["lm_eval_tasks"] == ["qwenft_json_extraction"]
    assert s["max_new_tokens"] == 16 and s["limit"] == 3 and s["system_policy"] == "default"
    assert default_eval_settings_from_run(run_dir / "adapter") == s
    with pytest.raises(UserError, match="not a qwenft run directory"):
        default_eval_settings_from_run(run_dir.parent)


def test_evaluate_run_dir_end_to_end(run_dir, tmp_path):
    from qwenft.evaluation import default_eval_settings_from_run, evaluate

    s = default_eval_settings_from_run(run_dir)
    out = tmp_path / "eval"
    res = evaluate(str(run_dir), suites=s["suites"], lm_eval_tasks=s["lm_eval_tasks"], modes=s["modes"],
                   max_new_tokens=s["max_new_tokens"], batch_size=s["batch_size"], limit=s["limit"],
                   system_policy=s["system_policy"], out_dir=out, compare_base=s["compare_base"])
    saved = json.loads((out / "results.json").read_text())
    assert set(saved) >= {"settings", "models", "versions", "seconds", "files"}
    assert set(saved["models"]) == {"tuned", "base"}
    tuned, base = saved["models"]["tuned"], saved["models"]["base"]
    assert "LoRA adapter" in tuned["label"] and "tiny random-weight" in base["label"]
    assert tuned["record"]["base"]["kind"] == "tiny"
    for m in (tuned, base):
        for mode in ("unconstrained", "constrained"):
            r = m["suites"]["json_extraction"][mode]
            assert r["n"] == 3 and set(r["metrics"]) == {"all", "in_distribution"}
            assert r["metrics"]["all"]["n"] == 3 and "compile_errors" in r and "forced_closes" in r
            assert (out / f"samples_{'tuned' if m is tuned else 'base'}_json_extraction_{mode}.jsonl").is_file()
        assert "qwenft_json_extraction" in m["lm_eval"]["metrics"]
    assert list((out / "lm_eval" / "tuned").glob("results_*.json"))
    assert list((out / "lm_eval" / "base").glob("samples_qwenft_json_extraction_*.jsonl"))
    sample = json.loads((out / "samples_tuned_json_extraction_constrained.jsonl").read_text().splitlines()[0])
    assert set(sample) >= {"id", "slice", "prompt", "output", "n_tokens", "stopped", "scores", "forced_close"}
    assert sample["n_tokens"] <= 16  # the budget bounds a random model
    md = (out / "comparison.md").read_text()
    assert "| suite | mode | slice | metric | base | tuned | Δ (tuned - base) |" in md
    assert "| json_extraction | constrained | all | schema_valid_rate |" in md
    assert "| qwenft_json_extraction | field_f1 |" in md
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res["models"]["tuned"]["label"] == tuned["label"]


def test_bad_suite_row_fails_before_any_model_loads(tmp_path, monkeypatch):
    import qwenft.evaluation as ev

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the suites were validated")

    monkeypatch.setattr(ev, "load_model_for_eval", boom)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok", "schema": {"type": "object"}}\n{"prompt": "x"}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: missing 'schema'"):
        ev.evaluate("tiny-random", suites=[str(bad)], lm_eval_tasks=[], out_dir=tmp_path / "o")
    with pytest.raises(UserError, match="Unknown decoding mode 'constraint'.*constrained"):
        ev.evaluate("tiny-random", suites=["json_extraction"], lm_eval_tasks=[], modes=["constraint"],
                    out_dir=tmp_path / "o")
    with pytest.raises(UserError, match="No suite has a slice 'held'.*held_out"):
        ev.evaluate("tiny-random", suites=["json_extraction"], lm_eval_tasks=[], slices=["held"],
                    out_dir=tmp_path / "o")
    with pytest.raises(UserError, match="Did you mean"):
        ev.evaluate("tiny-random", suites=["json_extration"], lm_eval_tasks=[], out_dir=tmp_path / "o")


def test_run_json_suite_records_and_slices(tiny_model_dir, repo_root):
    from qwenft.evaluate_json import run_json_suite
    from qwenft.generate import load_model_for_eval
    from qwenft.suites import load_suite

    lm = load_model_for_eval("tiny-random")
    rows = load_suite(repo_root / "eval/suites/schema_following.jsonl")
    res = run_json_suite(lm.model, lm.tokenizer, rows, modes=["constrained"], max_new_tokens=24,
                         batch_size=4, slices=["generic", "held_out_types"], limit=4, progress=False)
    r = res["constrained"]
    assert r["n"] == 4 and set(r["metrics"]) >= {"all"}
    assert set(r["metrics"]) - {"all"} <= {"generic", "held_out_types"}
    for rec in r["samples"]:
        assert rec["slice"] in ("generic", "held_out_types")
        assert rec["n_tokens"] <= 24
        if rec["forced_close"]:
            assert rec["scores"]["clean_stop"] is False
    with pytest.raises(UserError, match="has no slice 'nope'"):
        run_json_suite(lm.model, lm.tokenizer, rows, modes=["constrained"], max_new_tokens=4,
                       batch_size=4, slices=["nope"], progress=False)


def test_report_marks_deltas(tmp_path):
    from qwenft.report_eval import render_markdown, write_png

    def model(label, f1, tasks):
        return {"label": label, "suites": {"s": {"constrained": {
            "n": 2, "metrics": {"all": {"field_f1": f1, "mean_output_tokens": 10.0},
                                "a": {"field_f1": f1}}, "compile_errors": 1, "forced_closes": 0,
            "hit_budget": 0, "seconds": 1.0}}}, "lm_eval": {"metrics": {"t": tasks}}}

    results = {"settings": {}, "models": {"base": model("B", 0.25, {"acc": 0.5}),
                                          "tuned": model("T", 0.75, {"acc": 0.25})}}
    md = render_markdown(results)
    assert "| s | constrained | all | field_f1 | 0.250 | 0.750 | +0.500 ▲ |" in md
    assert "| t | acc | 0.500 | 0.250 | -0.250 ▼ |" in md
    assert "1 schema compile errors" in md
    write_png(results, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_cli_eval_uses_the_runs_settings_with_overrides(run_dir, tmp_path, capsys):
    from qwenft.cli import main

    out = tmp_path / "cli"
    rc = main(["eval", str(run_dir), "--limit", "2", "--mode", "unconstrained", "--max-new-tokens", "8",
               "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    s = res["settings"]
    assert s["limit"] == 2 and s["modes"] == ["unconstrained"] and s["max_new_tokens"] == 8
    assert s["lm_eval_tasks"] == ["qwenft_json_extraction"]  # from the run's recipe
    assert res["models"]["tuned"]["lm_eval"]["summary"]["qwenft_json_extraction"]
    assert str(out / "comparison.md") in capsys.readouterr().out
    assert main(["eval", str(run_dir), "--task", "no_such_task_xyz", "--out", str(out)]) == 2
