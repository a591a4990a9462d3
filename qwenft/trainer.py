"""SFT through TRL's SFTTrainer on data qwenft tokenized and masked itself.

Order of work: everything that can be wrong with the recipe or the data is
checked (and the mask audit run) before the model is loaded.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .base import ResolvedBase, library_versions, log, resolve_base
from .config import Recipe
from .data import DataReport, load_data
from .errors import UserError, is_disk_full
from .masking import MaskAudit, audit, enforce, tokenize_rows
from .runs import (COMPLETE_MARKER, checkpoint_step, complete_checkpoints, replace_dir, temp_dir_beside,
                   write_json_atomic, write_text_atomic)
from .template import template_hash


@dataclass
class Prepared:
    """Everything checked before the model loads."""

    recipe: Recipe
    base: ResolvedBase
    tokenizer: object
    data: DataReport
    train_examples: list
    val_examples: list
    audit: MaskAudit


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_tag() -> str:
    """'rank N: ' under a multi-process launch, '' otherwise (for messages every rank prints)."""
    return f"rank {os.environ.get('RANK', '0')}: " if world_size() > 1 else ""


def _all_ranks_any(flag: bool, device) -> bool:
    """True on every rank when it is True on any rank (a no-op outside torch.distributed)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def prepare(recipe: Recipe) -> Prepared:
    """Validate data, render, mask and audit; raise UserError before any weights load."""
    data = load_data(recipe.data, recipe.seed)
    for b in data.skipped:
        log(f"skipped bad row {b}")
    if data.skipped:
        log(f"skipped {len(data.skipped)} bad row(s) (data.on_bad_row: skip); see the list above and data_report.json")
    from .model import load_tokenizer

    base = resolve_base(recipe.model.base_model, allow_stand_in=recipe.model.allow_stand_in)
    tok = load_tokenizer(base.path, recipe)
    train = tokenize_rows(tok, data.train, max_length=recipe.data.max_length,
                          train_on=recipe.masking.train_on, system_policy=recipe.data.system_prompt)
    val = tokenize_rows(tok, data.validation, max_length=recipe.data.max_length,
                        train_on=recipe.masking.train_on, system_policy=recipe.data.system_prompt)
    a = audit(train + val, recipe.masking)
    return Prepared(recipe, base, tok, data, train, val, a)


def estimate(p: Prepared) -> dict:
    r = p.recipe
    per_step = r.training.batch_size * r.training.gradient_accumulation_steps * world_size()
    n = len(p.train_examples)
    steps_per_epoch = max(1, -(-n // per_step))
    steps = r.training.max_steps if r.training.max_steps > 0 else int(round(steps_per_epoch * r.training.epochs))
    tokens = sum(len(e.input_ids) for e in p.train_examples)
    trained = sum(e.n_trained for e in p.train_examples)
    return {"train_examples": n, "validation_examples": len(p.val_examples),
            "examples_per_step": per_step, "steps": steps, "steps_per_epoch": steps_per_epoch,
            "tokens_per_epoch": tokens, "trained_tokens_per_epoch": trained,
            "epochs_covered": steps / steps_per_epoch}


def _to_dataset(examples):
    import datasets

    return datasets.Dataset.from_dict({"input_ids": [e.input_ids for e in examples],
                                       "labels": [e.labels for e in examples]})


def _sft_config(recipe: Recipe, run_dir: Path, device: str, has_val: bool):
    import torch
    from trl import SFTConfig

    t = recipe.training
    dtype = recipe.model.dtype
    use_bf16 = device == "cuda" and dtype in ("bf16", "auto") and torch.cuda.is_bf16_supported()
    use_fp16 = device == "cuda" and dtype == "fp16"
    report = ["wandb"] if t.report_to == "wandb" else []
    return SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        seed=t.seed if t.seed is not None else recipe.seed,
        data_seed=recipe.seed,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=min(t.warmup_ratio, 0.999),  # transformers reads a value < 1 as a ratio
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy=("steps" if t.eval_steps else "no") if has_val else "no",
        eval_steps=t.eval_steps,
        report_to=report,
        run_name=recipe.run_name,
        bf16=use_bf16,
        fp16=use_fp16,
        use_cpu=device == "cpu",
        # qwenft truncates and masks itself; TRL must not re-tokenize or re-truncate.
        max_length=None,
        packing=False,
        padding_free=t.packing,
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        gradient_checkpointing=False,  # handled in model.attach_adapter (needs input grads with PEFT)
        dataloader_num_workers=0,
        disable_tqdm=False,
        save_only_model=False,
        ddp_find_unused_parameters=False,
    )


def _callbacks(run_dir: Path):
    from transformers import TrainerCallback

    class MetricsToJsonl(TrainerCallback):
        """Always a local metrics.jsonl, whatever tracker is on."""

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs:
                return
            rec = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    class MarkComplete(TrainerCallback):
        """A checkpoint counts only once this marker exists (Trainer writes in place)."""

        def on_save(self, args, state, control, **kw):
            if not state.is_world_process_zero:
                return
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                write_json_atomic(ckpt / COMPLETE_MARKER, {"step": state.global_step, "time": time.time()})

    class StopOnSignal(TrainerCallback):
        """SIGINT/SIGTERM: save a checkpoint at the end of this step and stop cleanly."""

        def __init__(self):
            self.requested = None
            self.previous = {}

        def on_train_begin(self, args, state, control, **kw):
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handler)

        def on_train_end(self, args, state, control, **kw):
            for sig, h in self.previous.items():
                signal.signal(sig, h)

        def _handler(self, signum, frame):
            if self.requested is not None:  # second signal: give up at once
                raise KeyboardInterrupt
            self.requested = signal.Signals(signum).name
            log(f"{rank_tag()}{self.requested} received: saving a checkpoint after this step, then stopping "
                f"(send it again to abort without saving)")

        def on_step_end(self, args, state, control, **kw):
            # Every rank must stop at the same step: a signal that reaches one rank only (kill -INT PID,
            # or reaching the ranks on either side of a step boundary) would otherwise leave that rank
            # saving while the others wait in the next step's all-reduce, until the 30-minute
            # collective timeout. One tiny all-reduce per optimizer step settles it.
            if _all_ranks_any(self.requested is not None, args.device):
                control.should_save = True
                control.should_training_stop = True

    return [MetricsToJsonl(), MarkComplete(), StopOnSignal()]


def resume_point(recipe: Recipe, run_dir: Path) -> str | None:
    mode = recipe.training.resume
    ckroot = run_dir / "checkpoints"
    if mode in ("false",):
        return None
    if mode in ("auto", "true"):
        done = complete_checkpoints(ckroot, warn=log)
        return str(done[-1]) if done else None
    p = Path(mode)
    if not (p / COMPLETE_MARKER).is_file():
        raise UserError(f"training.resume={mode} is not a complete qwenft checkpoint (no {COMPLETE_MARKER}); "
                        f"use resume: auto to pick the last complete one.")
    return str(p)


def write_run_record(run_dir: Path, p: Prepared, status: str, extra: dict | None = None) -> None:
    if not is_main_process():
        return
    rec = {
        "status": status,
        "run_name": p.recipe.run_name,
        "base": p.base.record(),
        "base_label": p.base.label,
        "recipe": p.recipe.to_dict(),
        "recipe_source": p.recipe.source_path,
        "library_versions": library_versions(),
        "chat_template_sha256": template_hash(p.tokenizer),
        "data": p.data.summary(),
        "mask_audit": p.audit.to_dict(),
        "estimate": estimate(p),
        "world_size": world_size(),
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if extra:
        rec.update(extra)
    write_json_atomic(run_dir / "run.json", rec)


def _save_adapter(trainer, tokenizer, run_dir: Path) -> Path:
    """Call on EVERY rank: under FSDP / DeepSpeed gathering the sharded weights is a collective.

    Only the main process writes. With plain DDP (or one process) the model is whole on rank 0 and
    the other ranks return at once.
    """
    dest = run_dir / "adapter"
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        # save_model gathers the shards on all ranks and writes from the main process only.
        # A rank-0-only save_pretrained would write DTensor shards (FSDP2: it raises) or empty
        # ZeRO-3 placeholders (peft only warns).
        if trainer.is_fsdp_enabled:
            trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        tmp = dest.parent / f".{dest.name}.tmp-shared"
        if is_main_process():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        trainer.accelerator.wait_for_everyone()
        trainer.save_model(str(tmp))
        trainer.accelerator.wait_for_everyone()
        if not is_main_process():
            return dest
    else:
        if not is_main_process():
            return dest
        tmp = temp_dir_beside(dest)
        trainer.model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if not (tmp / "chat_template.jinja").is_file() and tokenizer.chat_template:
        write_text_atomic(tmp / "chat_template.jinja", tokenizer.chat_template)
    replace_dir(tmp, dest)
    return dest


def _trainer_class():
    import torch
    import torch.nn.functional as F
    from trl import SFTTrainer

    class QwenftSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss can run the output head only where labels are trained.

        Same loss as TRL's (sum of token NLL over trained positions / number of trained
        tokens in the accumulated batch), computed with logits_to_keep and PyTorch's
        fused cross-entropy. On CPU this is several times faster than TRL's tiled
        kernel fallback; the price is holding the trained positions' logits in memory.
        """

        qwenft_native_loss = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self.qwenft_native_loss or return_outputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            labels = inputs["labels"]
            nxt = labels[:, 1:]
            keep = (nxt != -100).any(0).nonzero().flatten()
            fwd = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
            if keep.numel() == 0:
                keep = torch.zeros(1, dtype=torch.long, device=labels.device)
            out = model(**fwd, use_cache=False, logits_to_keep=keep)
            logits = out.logits.float()
            targets = nxt[:, keep]
            loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                       ignore_index=-100, reduction="sum")
            n_valid = (targets != -100).sum()
            denom = n_valid if num_items_in_batch is None else num_items_in_batch
            loss = loss_sum / torch.as_tensor(denom, device=loss_sum.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            mode = "train" if self.model.training else "eval"
            with torch.no_grad():
                correct = ((logits.argmax(-1) == targets) & (targets != -100)).sum()
                nv = self.accelerator.gather_for_metrics(n_valid).sum()
                nc = self.accelerator.gather_for_metrics(correct).sum()
            self._metrics[mode]["mean_token_accuracy"].append((nc / nv).item() if nv > 0 else 0.0)
            if mode == "train":
                n_tok = inputs["attention_mask"].sum() if "attention_mask" in inputs else torch.tensor(
                    inputs["input_ids"].numel(), device=labels.device)
                self._total_train_tokens += int(self.accelerator.gather_for_metrics(n_tok).sum().item())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

    return QwenftSFTTrainer


def build_trainer(p: Prepared, run_dir: Path, device: str, extra_callbacks=()):
    """Load the model, attach the adapter and wrap it in TRL's SFTTrainer."""
    from transformers import set_seed

    from .model import attach_adapter, load_base_model

    SFTTrainer = _trainer_class()

    recipe = p.recipe
    set_seed(recipe.seed)
    model = load_base_model(p.base.path, recipe, device)
    model = attach_adapter(model, recipe)
    args = _sft_config(recipe, run_dir, device, bool(p.val_examples))
    trainer = SFTTrainer(model=model, args=args, train_dataset=_to_dataset(p.train_examples),
                         eval_dataset=_to_dataset(p.val_examples) if p.val_examples else None,
                         processing_class=p.tokenizer,
                         callbacks=_callbacks(run_dir) + list(extra_callbacks))
    impl = recipe.training.loss_impl
    trainer.qwenft_native_loss = impl == "native" or (impl == "auto" and device == "cpu")
    return trainer


def train(recipe: Recipe, extra_callbacks=()) -> Path:
    """Run a recipe end to end: validate, audit, train, save the adapter and records."""
    t0 = time.time()
    p = prepare(recipe)
    run_dir = recipe.run_dir.resolve()
    enforce(p.audit)
    if recipe.training.resume == "false" and (run_dir / "checkpoints").exists() and is_main_process():
        import shutil

        shutil.rmtree(run_dir / "checkpoints")
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "mask_audit.json", p.audit.to_dict())
        write_json_atomic(run_dir / "data_report.json", p.data.summary())
        write_text_atomic(run_dir / "recipe.resolved.yaml", _yaml(recipe.to_dict()))
        write_run_record(run_dir, p, "running")
        # A few validation conversations travel with the run: merge parity and template parity use them.
        sample = [{"messages": r.messages, "tools": r.tools} for r in (p.data.validation or p.data.train)[:8]]
        write_text_atomic(run_dir / "val_samples.jsonl", "".join(json.dumps(x) + "\n" for x in sample))
    from .model import device_of

    device = device_of(recipe)
    est = estimate(p)
    log(f"base model: {p.base.label}")
    log(f"device: {device}; world size {world_size()}; per-device batch {recipe.training.batch_size} x "
        f"grad accum {recipe.training.gradient_accumulation_steps} x {world_size()} processes = "
        f"{est['examples_per_step']} examples per optimizer step; learning rate "
        f"{recipe.training.learning_rate} (not scaled with world size); each process gets "
        f"1/{world_size()} of every global batch")
    log(f"data: {est['train_examples']} train / {est['validation_examples']} validation examples; "
        f"{est['steps']} steps; {est['trained_tokens_per_epoch']} of {est['tokens_per_epoch']} tokens "
        f"trained per epoch ({p.audit.trained_fraction:.1%})")
    if recipe.training.report_to == "wandb" and not os.environ.get("WANDB_API_KEY"):
        os.environ["WANDB_MODE"] = "offline"
        log("wandb: no API key set, logging offline")
    if recipe.training.report_to == "wandb":
        os.environ.setdefault("WANDB_DIR", str(run_dir))
    trainer = build_trainer(p, run_dir, device, extra_callbacks)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not trainer.is_fsdp_enabled:
        if is_main_process():
            log(f"WARNING: the launcher asked for FSDP but it is not active on device {device} "
                f"(accelerate turns FSDP on only for GPU-type backends): this run is plain DDP, "
                f"every process holds the whole model")
    ckpt = resume_point(recipe, run_dir)
    if ckpt:
        log(f"resuming from {ckpt}")
    if is_main_process():
        _trim_metrics(run_dir / "metrics.jsonl", checkpoint_step(Path(ckpt)) if ckpt else 0)
    try:
        result = trainer.train(resume_from_checkpoint=ckpt)
    except BaseException as e:
        if is_main_process():  # run.json must not say "running" after a crash (e.g. another rank died)
            try:
                write_run_record(run_dir, p, "failed", {"error": f"{type(e).__name__}: {e}"[:2000]})
            except Exception:
                pass
        if isinstance(e, Exception) and is_disk_full(e):
            raise UserError(f"Disk full while training/checkpointing into {run_dir} ({e}). Earlier "
                            f"complete checkpoints are intact (a half-written one is skipped on resume); "
                            f"free space and rerun with resume: auto.") from None
        raise
    stopped_early = trainer.state.global_step < trainer.state.max_steps
    metrics = {"train_runtime_s": round(time.time() - t0, 2), "global_step": trainer.state.global_step,
               "max_steps": trainer.state.max_steps, "train_loss": result.training_loss}
    if p.val_examples and not stopped_early:  # every rank: evaluation is a collective under DDP
        metrics.update({k: v for k, v in trainer.evaluate().items()})
    adapter = None if stopped_early else _save_adapter(trainer, p.tokenizer, run_dir)  # every rank (FSDP/ZeRO)
    if is_main_process():
        from .report import plot_loss

        plot_loss(run_dir / "metrics.jsonl", run_dir / "loss.png", title=f"{recipe.run_name} — {p.base.label[:60]}")
        if stopped_early:
            write_run_record(run_dir, p, "interrupted", {"metrics": metrics})
            log(f"stopped at step {trainer.state.global_step}/{trainer.state.max_steps}; rerun with "
                f"resume: auto to continue")
        else:
            write_run_record(run_dir, p, "completed", {"metrics": metrics, "adapter": str(adapter)})
            log(f"adapter saved to {adapter}")
    return run_dir


def _trim_metrics(path: Path, keep_through_step: int) -> None:
    """On resume, drop log lines past the checkpoint (they are logged again); fresh runs start empty."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= keep_through_step:
                keep.append(line)
        except ValueError:
            continue
    write_text_atomic(path, "".join(x + "\n" for x in keep))


def _yaml(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)


def main_exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
