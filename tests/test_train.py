"""Training on the tiny model: what changes, what resumes, what packing preserves."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qwenft.config import load_recipe
from qwenft.runs import COMPLETE_MARKER

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke.yaml"


def smoke(tmp_path, *overrides):
    return load_recipe(SMOKE, [f"output_dir={tmp_path}", *overrides])


def adapter_tensors(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def test_every_trainable_param_changes_and_frozen_ones_do_not(tmp_path, tiny_model_dir):
    from transformers import TrainerCallback

    from qwenft.trainer import build_trainer, prepare

    recipe = smoke(tmp_path, "training.max_steps=2", "training.save_steps=100", "lora.dropout=0.0")
    p = prepare(recipe)
    trainer = build_trainer(p, recipe.run_dir, "cpu")
    before = {n: t.detach().clone() for n, t in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    trainable = [n for n, t in after.items() if t.requires_grad]
    frozen = [n for n, t in after.items() if not t.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # all-linear: every projection of every layer carries an adapter
    assert sum("lora_A" in n for n in trainable) == 2 * 7
    # LoRA B starts at zero, so A gets its first gradient on step 2: two steps move every tensor.
    unchanged = [n for n in trainable if torch.equal(before[n], after[n])]
    assert unchanged == []
    moved = [n for n in frozen if not torch.equal(before[n], after[n])]
    assert moved == []


def test_run_directory_holds_the_records(tmp_path, tiny_model_dir):
    from qwenft.trainer import train

    run = train(smoke(tmp_path, "training.max_steps=3", "training.save_steps=2"))
    rec = json.loads((run / "run.json").read_text())
    assert rec["status"] == "completed"
    assert rec["base"]["kind"] == "tiny" and "TEST MODEL" in rec["base_label"]
    assert rec["chat_template_sha256"] and len(rec["chat_template_sha256"]) == 64
    assert all(len(s["fingerprint"]) == 64 for s in rec["data"]["sources"])
    assert rec["library_versions"]["trl"] and rec["library_versions"]["peft"]
    assert rec["mask_audit"]["im_end_all_trained"] is True
    for name in ("recipe.resolved.yaml", "mask_audit.json", "data_report.json", "metrics.jsonl",
                 "loss.png", "val_samples.jsonl", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors", "adapter/tokenizer.json", "adapter/chat_template.jinja"):
        assert (run / name).is_file(), name
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == [1, 2, 3]
    assert (run / "checkpoints" / "checkpoint-2" / COMPLETE_MARKER).is_file()


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, tiny_model_dir):
    from transformers import TrainerCallback

    from qwenft.trainer import train

    common = ["training.max_steps=4", "training.save_steps=100", "lora.dropout=0.0"]
    full = train(smoke(tmp_path / "a", *common))

    class SigintAtStep2(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 1:  # during step 2: the real handler saves after it and stops
                os.kill(os.getpid(), signal.SIGINT)

    run_b = smoke(tmp_path / "b", *common)
    train(run_b, extra_callbacks=[SigintAtStep2()])
    rec = json.loads((run_b.run_dir / "run.json").read_text())
    assert rec["status"] == "interrupted" and not (run_b.run_dir / "adapter").exists()
    assert (run_b.run_dir / "checkpoints" / "checkpoint-2" / COMPLETE_MARKER).is_file()
    train(run_b)  # resume: auto
    assert json.loads((run_b.run_dir / "run.json").read_text())["status"] == "completed"
    a, b = adapter_tensors(full), adapter_tensors(run_b.run_dir)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst


def test_half_written_checkpoint_is_skipped(tmp_path, tiny_model_dir, capsys):
    from qwenft.trainer import resume_point

    recipe = smoke(tmp_path)
    ck = recipe.run_dir / "checkpoints"
    (ck / "checkpoint-2").mkdir(parents=True)
    (ck / "checkpoint-2" / COMPLETE_MARKER).write_text("{}")
    (ck / "checkpoint-4").mkdir()  # killed mid-save: no marker
    assert resume_point(recipe, recipe.run_dir) == str(ck / "checkpoint-2")
    assert "skipping" in capsys.readouterr().err


def _per_example_losses(model, examples, padding_free):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    coll = DataCollatorForLanguageModeling(pad_token_id=151643, padding_free=padding_free)
    batch = coll([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])
    with torch.no_grad():
        kw = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
        logits = model(**kw, use_cache=False).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1)
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    tok_loss = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    out = []
    if padding_free:
        bounds = [0]
        for e in examples:
            bounds.append(bounds[-1] + len(e.input_ids))
        for a, b in zip(bounds, bounds[1:]):
            seg = slice(a, b - 1)
            out.append(float(tok_loss[0, seg].sum() / mask[0, seg].sum()))
    else:
        for i in range(len(examples)):
            out.append(float(tok_loss[i].sum() / mask[i].sum()))
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_and_unpacked_losses_agree(tmp_path, tiny_untied_dir, attn):
    """Padding-free rows (position ids restart) must not attend across examples."""
    from transformers import AutoModelForCausalLM

    from qwenft.trainer import prepare

    p = prepare(smoke(tmp_path))
    exs = sorted(p.train_examples, key=lambda e: len(e.input_ids))[:2] + p.train_examples[-2:]
    # Random tiny weights give near-uniform outputs; scale them up so cross-talk would show.
    model = AutoModelForCausalLM.from_pretrained(tiny_untied_dir, dtype=torch.float32, attn_implementation=attn)
    with torch.no_grad():
        for prm in model.parameters():
            prm.mul_(8.0)
    packed = _per_example_losses(model, exs, padding_free=True)
    padded = _per_example_losses(model, exs, padding_free=False)
    assert max(abs(a - b) for a, b in zip(packed, padded)) < 1e-4, (packed, padded)
    assert len(set(round(x, 3) for x in packed)) > 1  # the examples really differ


@pytest.mark.parametrize("b_opts", [["training.packing=false"], ["training.loss_impl=trl"]],
                         ids=["padded-vs-padding-free", "trl-loss-vs-native"])
def test_speed_knobs_do_not_change_the_loss(tmp_path, tiny_model_dir, b_opts):
    """Padding-free batches and the native trained-positions-only loss give TRL's losses."""
    from qwenft.trainer import train

    common = ["training.max_steps=2", "training.save_steps=100", "lora.dropout=0.0"]
    a = train(smoke(tmp_path / "a", *common, "training.packing=true", "training.loss_impl=native"))
    b = train(smoke(tmp_path / "b", *common, *b_opts))
    la = [json.loads(x)["loss"] for x in (a / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    lb = [json.loads(x)["loss"] for x in (b / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(la) == len(lb) == 2
    assert max(abs(x - y) for x, y in zip(la, lb)) < 1e-4, (la, lb)


@pytest.mark.parametrize("opts", [
    ["quantization.load_in_4bit=true", "quantization.compute_dtype=fp32"],
    ["lora.use_dora=true"],
    ["lora.use_rslora=true", "lora.target_modules=[q_proj, v_proj]"],
    ["training.gradient_checkpointing=true"],
], ids=["qlora-nf4", "dora", "rslora-qv", "grad-ckpt"])
def test_training_options_run_on_cpu(tmp_path, tiny_model_dir, opts):
    from qwenft.trainer import train

    run = train(smoke(tmp_path, "training.max_steps=2", "training.save_steps=100", *opts))
    rec = json.loads((run / "run.json").read_text())
    assert rec["status"] == "completed"
    cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    if "lora.use_dora=true" in opts:
        assert cfg["use_dora"] is True
    if any("q_proj, v_proj" in o for o in opts):
        assert sorted(cfg["target_modules"]) == ["q_proj", "v_proj"] and cfg["use_rslora"] is True
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(losses) == 2 and all(l == l for l in losses)  # finite, not NaN


def test_wandb_offline_without_key_and_key_never_written(tmp_path, tiny_model_dir, monkeypatch, capfd):
    from qwenft.trainer import train

    secret = "wandb_SECRET_key_0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = train(smoke(tmp_path, "training.max_steps=1", "training.report_to=wandb"))
    out = capfd.readouterr()
    assert secret not in out.out + out.err
    for f in run.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    assert (run / "metrics.jsonl").is_file()
    assert any(run.rglob("*.wandb"))  # the offline run was recorded locally


def test_smoke_through_accelerate_launch(tmp_path, tiny_model_dir):
    """The documented command: accelerate launch qwenft/train.py recipes/smoke.yaml."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--num_processes", "1", "--cpu",
           "qwenft/train.py", "recipes/smoke.yaml", f"output_dir={tmp_path}", "training.max_steps=2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Path(proc.stdout.strip().splitlines()[-1]) == tmp_path.resolve() / "smoke"
    rec = json.loads((tmp_path / "smoke" / "run.json").read_text())
    assert rec["status"] == "completed"
