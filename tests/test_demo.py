"""The demo pipeline on the tiny model: same code path as `make demo`, smaller settings."""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_demo_pipeline_writes_every_artifact(tmp_path, tiny_model_dir):
    from qwenft.demo import run_demo

    res = run_demo(REPO / "recipes" / "smoke.yaml", tmp_path / "demo",
                   ["training.max_steps=2", "eval.slices=[held_out]", "eval.limit=2",
                    "eval.max_new_tokens=16", "eval.lm_eval_tasks=[qwenft_arith]"])
    run = tmp_path / "demo"
    assert res["run_dir"] == run.resolve() or res["run_dir"] == run
    report = (run / "report.md").read_text()
    assert "TEST MODEL" in report  # says which base was used
    assert "## What was measured" in report and "held_out" in report
    assert "0 overlaps" in report
    for png in ("loss.png", "eval/comparison.png"):
        assert (run / png).read_bytes()[:4] == b"\x89PNG", png
    results = json.loads((run / "eval" / "results.json").read_text())
    assert set(results["models"]) == {"tuned", "base"}
    assert results["models"]["tuned"]["suites"]["json_extraction"]["unconstrained"]["metrics"]["held_out"]["n"] == 2
    assert results["models"]["base"]["lm_eval"]
    merged = run / "merged"
    assert (merged / "config.json").is_file() and (merged / "qwenft_merge.json").is_file()
    card = (merged / "README.md").read_text()
    assert "## Evaluation" in card and "Not evaluated yet" not in card
    rep = json.loads((run / "report.json").read_text())
    assert rep["data_split"]["overlaps"] == 0 and rep["data_split"]["generator_files_current"]
    # every claim is reported with the measured numbers, met or not
    assert len(rep["claims"]) == 3 and all("base" in c and "tuned" in c for c in rep["claims"])
    assert rep["timings"]["total"] > 0


def test_demo_refuses_training_data_that_contains_eval_prompts(tmp_path):
    from qwenft.config import load_recipe
    from qwenft.demo import check_data_split
    from qwenft.errors import UserError

    row = json.loads((REPO / "eval" / "suites" / "json_extraction.jsonl").read_text().splitlines()[-1])
    leaked = tmp_path / "leak.jsonl"
    leaked.write_text(json.dumps({"messages": [{"role": "user", "content": row["prompt"]},
                                               {"role": "assistant", "content": json.dumps(row["gold"])}]}) + "\n")
    recipe = load_recipe(REPO / "recipes" / "demo.yaml",
                         [f"data.sources=[{{path: {leaked}}}]", "data.validation_sources=[]"])
    with pytest.raises(UserError, match="leaks"):
        check_data_split(recipe)
    ok = load_recipe(REPO / "recipes" / "demo.yaml")
    assert check_data_split(ok)["overlaps"] == 0


def test_demo_killed_mid_run_then_rerun_completes(tmp_path, tiny_model_dir):
    """`make demo` interrupted (kill -9 while training) and run again: the rerun starts clean
    and finishes with every artifact; nothing from the killed run is taken as a result."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "qwenft.cli", "demo", "--recipe", str(REPO / "recipes" / "smoke.yaml"),
           "--out", str(out), "training.max_steps=40", "training.save_steps=2", "eval.slices=[held_out]",
           "eval.limit=2", "eval.max_new_tokens=8", "eval.lm_eval_tasks=[]"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # kill once a checkpoint exists: training is under way, with state on disk to trip over
    while time.time() < deadline and p.poll() is None and not list((out / "checkpoints").glob("checkpoint-*")):
        time.sleep(0.2)
    assert p.poll() is None, "the demo ended before it could be interrupted"
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    assert not (out / "report.md").exists() and not (out / "eval" / "results.json").exists()

    cmd[cmd.index("training.max_steps=40")] = "training.max_steps=2"
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and run["estimate"]["steps"] == 2
    # the rerun trained from scratch: the killed run's later checkpoints are gone
    assert sorted(c.name for c in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert max(x.get("step", 0) for x in lines) == 2
    assert (out / "report.md").is_file() and (out / "merged" / "config.json").is_file()
    results = json.loads((out / "eval" / "results.json").read_text())
    assert set(results["models"]) == {"tuned", "base"}
