"""Faults: kill -9 mid-training, disk full while checkpointing and exporting, trust settings."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _train_cmd(out: Path, *overrides):
    return [sys.executable, "-m", "qwenft.cli", "train", str(REPO / "recipes" / "smoke.yaml"),
            f"output_dir={out}", "lora.dropout=0.0", *overrides]


def _losses(run: Path):
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in steps if "loss" in r]


def test_kill_9_during_training_then_resume_auto(tmp_path, tiny_model_dir):
    """Killed at a random point after the first checkpoint: resume continues from the last complete one."""
    rng = random.Random(int(time.time()))
    cmd = _train_cmd(tmp_path, "training.max_steps=6", "training.save_steps=1", "training.save_total_limit=3")
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = tmp_path / "smoke" / "checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline and not (ck / "checkpoint-1" / "qwenft_complete.json").exists():
        assert proc.poll() is None, "training ended before the first checkpoint"
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 3.0))  # anywhere in the next steps, saves included
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = tmp_path / "smoke"
    assert json.loads((run / "run.json").read_text())["status"] == "running"  # never claimed done
    # simulate the worst case too: a newer checkpoint cut off mid-save
    (ck / "checkpoint-999").mkdir()
    (ck / "checkpoint-999" / "adapter_model.safetensors").write_bytes(b"partial")
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipping" in done.stderr and "checkpoint-999" in done.stderr
    assert re.search(r"resuming from .*checkpoint-\d+", done.stderr)
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    steps = [s for s, _ in _losses(run)]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # no step logged twice after trimming


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()

    def mount(size: str):
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()}): disk-full tests need root "
                        f"and mount rights")
        return mnt

    yield mount
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_while_checkpointing_is_a_clear_error(tmp_path, small_tmpfs, tiny_model_dir):
    mnt = small_tmpfs("20m")  # room for one 12 MB checkpoint, not two
    proc = subprocess.run(_train_cmd(mnt, "training.max_steps=4", "training.save_steps=1",
                                     "training.save_total_limit=5"),
                          env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "qwenft error:" in proc.stderr and ("Disk full" in proc.stderr or "No space left" in proc.stderr)
    ck = mnt / "smoke" / "checkpoints" / "checkpoint-1"
    assert (ck / "qwenft_complete.json").is_file()
    from safetensors.torch import load_file

    assert load_file(str(ck / "adapter_model.safetensors"))  # the earlier checkpoint is intact


def test_disk_full_while_exporting_leaves_nothing(tmp_path, small_tmpfs, tiny_model_dir):
    from qwenft.config import load_recipe
    from qwenft.trainer import train

    run = train(load_recipe(REPO / "recipes" / "smoke.yaml",
                            [f"output_dir={tmp_path}", "training.max_steps=1", "training.save_steps=100"]))
    mnt = small_tmpfs("8m")  # the fp32 tiny checkpoint is ~39 MB
    out = mnt / "merged"
    proc = subprocess.run([sys.executable, "-m", "qwenft.cli", "merge", str(run), "--out", str(out)],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "qwenft error:" in proc.stderr
    assert not out.exists()
    assert not list(mnt.glob(".merged.tmp-*"))  # the temp dir was cleaned up


def test_no_unsafe_loading_in_the_library():
    """trust_remote_code is off unless a recipe turns it on; torch.load only with weights_only=True."""
    from qwenft.config import Recipe

    assert Recipe().model.trust_remote_code is False
    src = "\n".join(p.read_text() for p in (REPO / "qwenft").glob("*.py"))
    for m in re.finditer(r"torch\.load\(([^)]*)\)", src):
        assert "weights_only=True" in m.group(1), m.group(0)
    assert "trust_remote_code=True" not in src
    for m in re.finditer(r"from_pretrained\(([^)]*)\)", src):
        assert "trust_remote_code=True" not in m.group(1)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_loading_refuses_pickled_code(tmp_path):
    """Trainer resume reads optimizer/scheduler/RNG files with a bare torch.load; with the torch
    qwenft pins (>= 2.6) that defaults to weights_only=True, so a planted pickle is refused."""
    import pickle

    import torch

    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in "\n".join(
        p.read_text() for p in (REPO / "qwenft").glob("*.py"))
    bad = tmp_path / "optimizer.pt"
    with open(bad, "wb") as f:
        pickle.dump(_Evil(), f)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(bad)


def test_eval_killed_midway_leaves_no_results_and_rerun_succeeds(tmp_path, tiny_model_dir):
    """A killed `qwenft eval` leaves no results.json for gates or cards to accept; a rerun completes."""
    from qwenft.config import load_recipe
    from qwenft.trainer import train

    run = train(load_recipe(REPO / "recipes" / "smoke.yaml",
                            [f"output_dir={tmp_path}", "training.max_steps=1", "training.save_steps=100"]))
    out = tmp_path / "ev"
    cmd = [sys.executable, "-m", "qwenft.cli", "eval", str(run), "--suite", "json_extraction", "--limit", "4",
           "--mode", "unconstrained", "--max-new-tokens", "24", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("samples_*.jsonl")):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"tuned", "base"}
