"""`qwenft bench`: training, eval-generation and merge speed, measured side by side in one run.

What is measured (everything on the same machine, in the same run):

1. Training throughput of qwenft's training path (`qwenft.trainer.train`, the code
   `qwenft train` runs) against plain TRL `SFTTrainer` with its defaults (and with
   fp32 + no gradient checkpointing, TRL's defaults minus its CPU-hostile ones), on a
   generated chat dataset whose lengths follow a truncated log-normal (multi-turn
   included). Same model, data, LoRA settings, max length, effective batch, steps and
   seed; every side sees the same batches. Each side runs in a fresh process (forked
   from a parent that imported the libraries and computed nothing, so the imports are
   paid once), so peak RSS figures are separate. Warm-up steps are excluded; tokens are
   counted from the batches each `training_step` receives. An ablation shows what each
   qwenft knob (padding-free batches, native loss) adds.
2. MFU: model FLOPs = 4 * N * real tokens (LoRA: forward 2N + activation gradients 2N,
   no weight gradients for frozen weights; full fine-tuning would be 6N) over a
   matrix-multiply peak measured in the same run.
3. Eval generation on the stand-in: batched vs one-by-one, constrained vs unconstrained.
4. `qwenft merge` of a stand-in run: wall time and peak RSS, with a phase breakdown.

The last line of stdout is one JSON object with every figure; OUT/bench.json holds the
same object and OUT/bench.md the table.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

# --------------------------------------------------------------------------- constants

LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
MAX_LENGTH = 1024
SEED = 42
LEARNING_RATE = 2e-4
H200_BF16_DENSE_PEAK = 989e12  # FLOP/s, NVIDIA's dense (no sparsity) bf16 figure for the H200 SXM
FLOPS_FORMULA = (
    "model FLOPs = 4 * N * T for LoRA training (forward 2N + backward activation-gradients 2N per token; "
    "frozen weights get no weight-gradient, the LoRA matrices' own FLOPs are ignored); full fine-tuning "
    "would be 6 * N * T. T = non-padding tokens that went through the model. N = parameters that take "
    "part in a matmul per token: every parameter except the input-embedding lookup table; the output "
    "head counts (for a tied model the shared matrix counts once, as the head; for the untied stand-in "
    "the separate output matrix counts). Attention score FLOPs (~ 4 * layers * hidden * seq) are left out. "
    "The head's share of N is computed for every position here although qwenft's native loss runs it "
    "only at trained positions and TRL's fused head runs it at every processed position (padding "
    "included): MFU credits the model's FLOPs, not what each implementation executes. Gradient "
    "checkpointing (TRL's default) recomputes the forward: that extra work is not credited either.")

# Tokens the Qwen2.5 template adds around the content: the default system prompt
# (about 20 tokens) and about 5 per message (<|im_start|>role\n ... <|im_end|>\n).
SYSTEM_OVERHEAD = 20
PER_MESSAGE_OVERHEAD = 5

FILLER_WORDS = (
    "time people way year day thing man world life hand part child eye woman place work week case "
    "point number group problem fact river garden window market table letter story paper music water "
    "light color sound money family city house road school night morning summer winter forest stone "
    "metal glass bread apple train field question answer reason result system method model value "
    "level order line plan idea note list page report friend teacher doctor farmer driver writer "
    "artist builder sailor keeps takes makes gives finds tells asks feels tries leaves calls moves "
    "turns holds brings begins shows hears plays runs walks reads writes opens closes carries watches "
    "follows builds small large early late young old good new long great little own other right high "
    "different next last few public bad same able bright quiet simple careful warm cold dark clean "
    "fresh heavy soft loud slow quick and the of to in on with for at by from about over under after "
    "before near").split()

MODES = {
    # quick: the test; tiny model only, two steps, a dozen short rows.
    "quick": {"tiny": {"warmup": 1, "timed": 1, "batch": 2, "ga": 1},
              "data": {"rows": 12, "median": 60.0, "sigma": 0.6, "lo": 30, "hi": 160},
              "matmul": {"n": 1024, "repeats": 3, "per_repeat": 2}},
    # default: sized for a 2-core CPU. The stand-in runs batches of 2: batches of 4 rows
    # of up to 1,000 tokens took 8.4 GB (qwenft) and over 14 GB (TRL fp32, OOM-killed on
    # 24 GB), and a ~1,000-token step took 1-2.5 minutes on a busy 2-core machine.
    "default": {"tiny": {"warmup": 1, "timed": 2, "batch": 4, "ga": 1},
                "stand_in": {"warmup": 1, "timed": 2, "batch": 2, "ga": 1},
                "gpu": {"warmup": 3, "timed": 10, "batch": 8, "ga": 1},
                "data": {"rows": 64, "median": 180.0, "sigma": 0.9, "lo": 30, "hi": 1000},
                "matmul": {"n": 2048, "repeats": 5, "per_repeat": 3}},
}
# TRL's defaults on CPU include bf16 autocast: on CPUs without native bf16 matmuls
# (AVX2 only, like this project's) that runs the 0.5B model's matmuls ~6x slower than
# fp32, so a single stand-in step takes many minutes. The default bench therefore runs
# TRL's defaults on the tiny model and TRL fp32 (no gradient checkpointing) on the
# stand-in; set QWENFT_BENCH_STAND_IN_TRL_DEFAULTS=1 to add TRL's defaults there too.
STAND_IN_TRL_DEFAULTS_ENV = "QWENFT_BENCH_STAND_IN_TRL_DEFAULTS"

MERGE_PARITY_THRESHOLD = 50.0
# Eval generation as `make demo` runs it: 16 prompts, the 128-token demo budget, and
# qwenft eval's default batch size (EvalConfig.batch_size); one-by-one is the same call
# at batch size 1. Prefill (~170 prompt tokens a row) is compute-bound and costs the same
# per row either way, so a shorter budget shrinks the ratio and a longer one grows it.
EVAL_PROMPTS = 16
EVAL_MAX_NEW_TOKENS = 128


# --------------------------------------------------------------------------- pure arithmetic (tested)


def lognormal_lengths(n: int, *, seed: int, median: float = 180.0, sigma: float = 0.9,
                      lo: int = 30, hi: int = 1000) -> list[int]:
    """n integer lengths from a log-normal (given median and sigma), truncated to [lo, hi].

    Truncated by redrawing (no pile-up at the bounds); deterministic for a seed.
    """
    if not (0 < lo <= hi) or n < 0:
        raise ValueError("need 0 < lo <= hi and n >= 0")
    rng = random.Random(seed)
    mu = math.log(median)
    out: list[int] = []
    for _ in range(n * 1000 + 1000):
        if len(out) == n:
            break
        x = int(round(rng.lognormvariate(mu, sigma)))
        if lo <= x <= hi:
            out.append(x)
    if len(out) < n:
        raise ValueError(f"median {median} / sigma {sigma} put almost nothing in [{lo}, {hi}]")
    return out


def _filler(rng: random.Random, n_tokens: int) -> str:
    """Lower-case filler sentences of about n_tokens tokens (each word and each '.' ~ one token)."""
    words: list[str] = []
    left = max(2, n_tokens)
    while left > 0:
        k = min(left - 1, rng.randint(5, 14)) if left > 2 else left
        k = max(1, k)
        words.append(" ".join(rng.choice(FILLER_WORDS) for _ in range(k)) + ".")
        left -= k + 1
    return " ".join(words)


def make_conversations(n: int, *, seed: int = SEED, median: float = 180.0, sigma: float = 0.9,
                       lo: int = 30, hi: int = 1000) -> list[dict]:
    """n chat rows ({"messages": [...]}) whose rendered lengths follow lognormal_lengths.

    Turns: 1 exchange (60%), 2 (25%) or 3 (15%), fewer when the row is too short to hold
    them; the content budget is the target length minus the template's overhead, split
    between user and assistant messages at random.
    """
    lengths = lognormal_lengths(n, seed=seed, median=median, sigma=sigma, lo=lo, hi=hi)
    rng = random.Random(seed + 1)
    rows = []
    for target in lengths:
        r = rng.random()
        turns = 1 if r < 0.6 else (2 if r < 0.85 else 3)

        def budget(t):
            return target - SYSTEM_OVERHEAD - 2 * PER_MESSAGE_OVERHEAD * t

        while turns > 1 and budget(turns) < 8 * turns:
            turns -= 1
        content = max(4 * turns, budget(turns))
        weights = [rng.uniform(0.5, 1.5) for _ in range(turns)]
        total_w = sum(weights)
        messages = []
        for w in weights:
            turn_tokens = max(4, int(round(content * w / total_w)))
            user_tokens = max(2, int(round(turn_tokens * rng.uniform(0.15, 0.6))))
            asst_tokens = max(2, turn_tokens - user_tokens)
            messages.append({"role": "user", "content": _filler(rng, user_tokens)})
            messages.append({"role": "assistant", "content": _filler(rng, asst_tokens)})
        rows.append({"messages": messages})
    return rows


def batch_token_counts(batch: dict, pad_token_id: int | None = None) -> dict:
    """Tokens in one micro-batch as the model receives it.

    processed: every position that goes through the model (input_ids.numel()).
    real: non-padding positions: attention_mask.sum() for padded batches; for
      padding-free batches (position_ids, no attention_mask) every position except a
      trailing run of pad tokens at position 0 (what pad_to_multiple_of appends).
    padding: processed - real.
    trained: positions whose next-token label is not -100 (labels[..., 1:]); that is
      the number of tokens the loss is computed on.
    sequences: rows (padded) or examples packed in the row (padding-free).
    """
    ids = batch["input_ids"]
    processed = int(ids.numel())
    mask = batch.get("attention_mask")
    pos = batch.get("position_ids")
    if mask is not None:
        real = int(mask.sum())
        sequences = int(ids.shape[0])
    elif pos is not None:
        flat_pos = pos.reshape(-1).tolist()
        flat_ids = ids.reshape(-1).tolist()
        tail = 0
        if pad_token_id is not None:
            while (tail < processed and flat_pos[processed - 1 - tail] == 0
                   and flat_ids[processed - 1 - tail] == pad_token_id):
                tail += 1
        real = processed - tail
        sequences = sum(1 for p in flat_pos[:real] if p == 0)
    else:
        real = processed
        sequences = int(ids.shape[0])
    labels = batch.get("labels")
    trained = int((labels[..., 1:] != -100).sum()) if labels is not None else 0
    return {"processed": processed, "real": real, "padding": processed - real, "trained": trained,
            "sequences": sequences}


def padding_fraction(padding: int, processed: int) -> float:
    """Padding tokens / tokens the model processed (0 when nothing was processed)."""
    return padding / processed if processed > 0 else 0.0


def training_flops_per_token(n_params: int, method: str = "lora") -> int:
    """4N for LoRA (no weight gradients of frozen weights), 6N for full fine-tuning."""
    if method == "lora":
        return 4 * n_params
    if method == "full":
        return 6 * n_params
    raise ValueError(f"unknown method {method!r}")


def mfu(tokens_per_s: float, n_params: int, peak_flops: float, method: str = "lora") -> float:
    """Achieved model FLOP/s over peak FLOP/s."""
    if peak_flops <= 0:
        return 0.0
    return tokens_per_s * training_flops_per_token(n_params, method) / peak_flops


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None when either is missing or b is not positive."""
    if a is None or b is None or b <= 0:
        return None
    return a / b


def matmul_param_count(model) -> dict:
    """N for the FLOP formula: all parameters except the input-embedding table; the head counts.

    For a tied model the shared matrix is a parameter once and counts as the head.
    LoRA parameters are left out (the formula ignores their small FLOPs).
    """
    # LoRA matrices (when the model carries an adapter) are not part of N: their FLOPs are ignored.
    total = sum(p.numel() for name, p in model.named_parameters() if "lora_" not in name)
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    tied = emb is head or emb.data_ptr() == head.data_ptr()
    n = total if tied else total - emb.numel()
    return {"total": int(total), "n_flops": int(n), "head": int(head.numel()), "tied": bool(tied)}


def summarize_steps(steps: list[dict], warmup: int) -> dict:
    """Figures over the steps after the first `warmup` ones.

    Each step record: step, t_begin, t_end (perf_counter at on_step_begin/on_step_end)
    and token counts (sums over its micro-batches). step time = t_end[k] - t_end[k-1]
    (the whole loop: fetch + collate, forward, backward, optimizer, logging);
    compute time = t_end[k] - t_begin[k] (from on_step_begin, after the batch is fetched).
    cpu_util: CPU seconds the process used over those steps / their wall seconds (how many
    cores it really had: 2.0 on an idle 2-core machine, less when others compete).
    """
    steps = sorted(steps, key=lambda s: s["step"])
    timed = [s for s in steps if s["step"] > warmup]
    if not timed or warmup < 1:
        raise ValueError("need at least one warm-up step and one timed step")
    prev_end = {s["step"]: s["t_end"] for s in steps}
    loop = [s["t_end"] - prev_end[s["step"] - 1] for s in timed]
    compute = [s["t_end"] - s["t_begin"] for s in timed]
    tot = {k: sum(s[k] for s in timed) for k in ("processed", "real", "padding", "trained", "sequences")}
    secs = sum(loop)
    prev_cpu = {s["step"]: s.get("cpu_end") for s in steps}
    cpu = [s.get("cpu_end") - prev_cpu[s["step"] - 1] for s in timed
           if s.get("cpu_end") is not None and prev_cpu.get(s["step"] - 1) is not None]
    return {
        "cpu_util": sum(cpu) / secs if cpu and len(cpu) == len(timed) and secs > 0 else None,
        "timed_steps": len(timed), "warmup_steps": warmup,
        "seconds": secs, "step_s": secs / len(timed), "compute_step_s": sum(compute) / len(timed),
        "real_tokens": tot["real"], "processed_tokens": tot["processed"], "padding_tokens": tot["padding"],
        "trained_tokens": tot["trained"], "sequences": tot["sequences"],
        "real_tokens_per_s": tot["real"] / secs if secs > 0 else 0.0,
        "trained_tokens_per_s": tot["trained"] / secs if secs > 0 else 0.0,
        "processed_tokens_per_s": tot["processed"] / secs if secs > 0 else 0.0,
        "padding_fraction": padding_fraction(tot["padding"], tot["processed"]),
        "real_tokens_per_step": [s["real"] for s in timed],
    }


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return 0.0
    k = (len(xs) - 1) * q
    f, c = math.floor(k), math.ceil(k)
    return xs[f] + (xs[c] - xs[f]) * (k - f)


# --------------------------------------------------------------------------- machine


def _rss_now_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def _cpu_now() -> float:
    """CPU seconds (user + system, all threads) this process has used."""
    t = os.times()
    return t.user + t.system


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import importlib.metadata as md

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "xgrammar"):
        try:
            info[name] = md.version(name)
        except md.PackageNotFoundError:
            info[name] = None
    try:
        info["mem_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def _measure_matmul_peak(n: int = 2048, repeats: int = 5, per_repeat: int = 3) -> dict:
    """Best fp32 torch.mm FLOP/s over a few repeats, all intra-op threads (runs in a child).

    Also a short bf16 figure (F.linear; TRL's default autocast dtype) for context; the peak used
    for MFU is the fp32 one (the dtype both sides compute in, but TRL's defaults).
    """
    import torch

    out = {"n": n, "dtype": "fp32", "threads": torch.get_num_threads(), "repeats": repeats,
           "per_repeat": per_repeat, "cuda_available": bool(torch.cuda.is_available())}

    def best(dtype, reps, per):
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g).to(dtype)
        b = torch.randn(n, n, generator=g).to(dtype)
        c = torch.empty(n, n, dtype=dtype)
        # fp32: torch.mm; bf16: F.linear, the call nn.Linear makes (torch.mm in bf16 takes a
        # far slower kernel on CPUs without native bf16, ~1 GFLOP/s here).
        mm = (lambda: torch.mm(a, b, out=c)) if dtype == torch.float32 else (
            lambda: torch.nn.functional.linear(a, b))
        mm()  # warm-up
        top, times = 0.0, []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(per):
                mm()
            dt = time.perf_counter() - t0
            times.append(dt / per)
            top = max(top, 2 * n**3 * per / dt)
        return top, 2 * n**3 / percentile(times, 0.5)

    out["flops"], med = best(torch.float32, repeats, per_repeat)
    out["gflops"] = out["flops"] / 1e9
    out["median_gflops"] = med / 1e9
    bf, _ = best(torch.bfloat16, 2, 1)
    out["bf16_gflops"] = bf / 1e9
    if out["cuda_available"]:
        out["cuda_device"] = torch.cuda.get_device_name(0)
    return out


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, all threads) of a live process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


# A forked child that burns no CPU for this long is stuck (an OpenMP barrier inherited
# in a bad state across fork was seen once in ~20 runs): it is killed and run again.
STALL_S = 90.0


def _fork_once(fn, args: tuple, out: Path, stall_s: float) -> tuple[int, object, bool]:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.dup2(2, 1)
            res = fn(*args)
            res["self_peak_rss_mb"] = _peak_rss_mb()
            out.write_text(json.dumps(res, default=str))
        except BaseException:  # noqa: BLE001 - reported to the parent
            code = 1
            try:
                out.write_text(json.dumps({"error": traceback.format_exc()[-6000:]}))
            except Exception:  # noqa: BLE001
                pass
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    last_cpu, last_change = -1.0, time.monotonic()
    while True:
        done, status, ru = os.wait4(pid, os.WNOHANG)
        if done:
            return status, ru, False
        cpu = _cpu_seconds(pid)
        now = time.monotonic()
        if cpu is not None and cpu > last_cpu + 0.05:
            last_cpu, last_change = cpu, now
        elif now - last_change > stall_s:
            os.kill(pid, 9)
            _, status, ru = os.wait4(pid, 0)
            return status, ru, True
        time.sleep(0.25)


def run_isolated(fn, args: tuple, *, label: str, workdir: Path, attempts: int = 3,
                 stall_s: float = STALL_S) -> dict:
    """Run fn(*args) -> dict in a forked child; add the child's own peak RSS (wait4) and wall.

    The parent has imported the heavy libraries but run no torch computation, so every
    child starts from the same state, as a fresh process that imported them would,
    without paying the imports again. The child's stdout goes to stderr: the bench's
    stdout is kept for the table and the final JSON line. A child that stalls (no CPU
    used for stall_s) is killed and run again, up to `attempts` times; retries are
    reported.
    """
    from .base import log

    out = workdir / f"{label}.result.json"
    stalls = 0
    for _ in range(attempts):
        out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        status, ru, stalled = _fork_once(fn, args, out, stall_s)
        wall = time.perf_counter() - t0
        if not stalled:
            break
        stalls += 1
        log(f"bench: {label}: the child used no CPU for {stall_s:.0f} s (stuck); killed, running it again")
    try:
        res = json.loads(out.read_text())
    except (OSError, ValueError):
        res = {"error": f"child for {label} exited with status {status} and wrote no result"
                        + (" (stalled every attempt)" if stalled else "")}
    res["peak_rss_mb"] = ru.ru_maxrss / 1024
    res["process_wall_s"] = wall
    res["stalled_retries"] = stalls
    return res


# --------------------------------------------------------------------------- training sides (children)


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begin: dict[int, float] = {}
            self.end: dict[int, float] = {}
            self.cpu: dict[int, float] = {}
            self.train_begin = None

        def on_train_begin(self, args, state, control, **kw):
            self.train_begin = time.perf_counter()

        def on_step_begin(self, args, state, control, **kw):
            self.begin[state.global_step + 1] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.end[state.global_step] = time.perf_counter()  # global_step already counts this step
            self.cpu[state.global_step] = _cpu_now()

    return StepTimer()


def _instrument(trainer, counts: dict, pad_id):
    """Count tokens of every micro-batch training_step receives, by optimizer step."""
    orig = trainer.training_step

    def training_step(model, inputs, *a, **kw):
        c = batch_token_counts(inputs, pad_id)
        acc = counts.setdefault(trainer.state.global_step + 1, {k: 0 for k in c})
        for k, v in c.items():
            acc[k] += v
        return orig(model, inputs, *a, **kw)

    trainer.training_step = training_step


def _steps_from(timer, counts, n_steps: int) -> list[dict]:
    steps = []
    for s in range(1, n_steps + 1):
        if s not in timer.end or s not in counts:
            continue
        steps.append({"step": s, "t_begin": timer.begin.get(s, timer.end[s]), "t_end": timer.end[s],
                      "cpu_end": timer.cpu.get(s), **counts[s]})
    return steps


def qwenft_recipe_dict(*, base_model: str, data_path: str, out_dir: str, steps: int, batch: int, ga: int,
                       packing: bool, loss_impl: str, dtype: str = "fp32", use_cpu: bool = True,
                       run_name: str = "bench") -> dict:
    return {
        "run_name": run_name, "output_dir": out_dir, "seed": SEED,
        "model": {"base_model": base_model, "dtype": dtype, "allow_stand_in": True},
        "lora": dict(LORA),
        "data": {"sources": [{"path": data_path}], "max_length": MAX_LENGTH, "shuffle": False,
                 "validation_fraction": 0.0},
        "masking": {"max_truncated_turns": 1.0, "min_trained_fraction": 0.0},
        "training": {"max_steps": steps, "batch_size": batch, "gradient_accumulation_steps": ga,
                     "learning_rate": LEARNING_RATE, "packing": packing, "loss_impl": loss_impl,
                     "save_steps": 1_000_000, "logging_steps": 1, "use_cpu": use_cpu, "resume": "false",
                     "eval_steps": None},
        # The bench's adapter is a few steps old: its update is mostly below bf16 resolution, so
        # the bf16 export can miss the default parity threshold (0.5). A permissive threshold
        # lets the merge's timing cover the whole command; the measured parity is reported.
        "merge": {"dtype": "bf16", "parity_threshold": MERGE_PARITY_THRESHOLD},
    }


def _side_result(kind, steps, cfg, model, setup_s, train_s, extra) -> dict:
    from .base import log

    n = matmul_param_count(model.get_base_model() if hasattr(model, "get_base_model") else model)
    res = {"kind": kind, "steps": steps, "n_params": n, "setup_s": setup_s, "train_s": train_s,
           "loadavg_1m_at_end": os.getloadavg()[0],
           "warmup": cfg["warmup"], "timed": cfg["timed"], "batch": cfg["batch"], "ga": cfg["ga"], **extra}
    log(f"bench: {kind} done ({len(steps)} steps recorded, train {train_s:.1f} s)")
    return res


def train_qwenft_side(spec: dict) -> dict:
    """qwenft's own training path: qwenft.trainer.train(recipe), timed and counted."""

    from . import trainer as qtrainer
    from .config import recipe_from_dict

    cfg = spec["cfg"]
    n_steps = cfg["warmup"] + cfg["timed"]
    t0 = time.perf_counter()
    recipe = recipe_from_dict(qwenft_recipe_dict(
        base_model=spec["model"], data_path=spec["data"], out_dir=spec["out_dir"], steps=n_steps,
        batch=cfg["batch"], ga=cfg["ga"], packing=spec["packing"], loss_impl=spec["loss_impl"],
        dtype=spec.get("dtype", "fp32"), use_cpu=spec.get("device", "cpu") == "cpu",
        run_name=spec["run_name"]))
    timer = _step_timer()
    counts: dict = {}
    holder = {}
    orig_build = qtrainer.build_trainer

    def build_trainer(p, run_dir, device, extra_callbacks=()):
        tr = orig_build(p, run_dir, device, extra_callbacks)
        _instrument(tr, counts, p.tokenizer.pad_token_id)
        holder["trainer"] = tr
        holder["setup_s"] = time.perf_counter() - t0
        holder["native_loss"] = bool(getattr(tr, "qwenft_native_loss", False))
        holder["padding_free"] = bool(tr.args.padding_free)
        holder["lengths"] = [len(e.input_ids) for e in p.train_examples]
        holder["trained"] = [e.n_trained for e in p.train_examples]
        return tr

    qtrainer.build_trainer = build_trainer
    try:
        run_dir = qtrainer.train(recipe, extra_callbacks=[timer])
    finally:
        qtrainer.build_trainer = orig_build
    tr = holder["trainer"]
    train_s = (timer.end.get(n_steps, time.perf_counter()) - timer.train_begin) if timer.train_begin else 0.0
    steps = _steps_from(timer, counts, n_steps)
    lengths = holder["lengths"]
    extra = {"run_dir": str(run_dir), "packing": spec["packing"], "loss_impl": spec["loss_impl"],
             "native_loss": holder["native_loss"], "padding_free": holder["padding_free"],
             "dtype": spec.get("dtype", "fp32"), "device": spec.get("device", "cpu"),
             "gradient_checkpointing": False,
             "loss_on": "assistant turns only (qwenft masking, <|im_end|> included)",
             "dataset_tokens": {"rows": len(lengths), "min": min(lengths), "p50": percentile(lengths, 0.5),
                                "p90": percentile(lengths, 0.9), "max": max(lengths),
                                "mean": sum(lengths) / len(lengths),
                                "trained_fraction": sum(holder["trained"]) / max(1, sum(lengths))}}
    return _side_result("qwenft", steps, cfg, tr.model, holder["setup_s"], train_s, extra)


def train_trl_side(spec: dict) -> dict:
    """Plain TRL SFTTrainer with its defaults (but for the overrides listed in the result)."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from .base import resolve_base

    cfg = spec["cfg"]
    n_steps = cfg["warmup"] + cfg["timed"]
    device = spec.get("device", "cpu")
    t0 = time.perf_counter()
    path = resolve_base(spec["model"], allow_stand_in=True).path
    tok = AutoTokenizer.from_pretrained(path)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
    rows = [json.loads(x) for x in Path(spec["data"]).read_text().splitlines() if x.strip()]
    ds = datasets.Dataset.from_list([{"messages": r["messages"]} for r in rows])
    overrides = dict(spec.get("trl_overrides") or {})
    args = SFTConfig(output_dir=spec["out_dir"], max_steps=n_steps, per_device_train_batch_size=cfg["batch"],
                     gradient_accumulation_steps=cfg["ga"], learning_rate=LEARNING_RATE, seed=SEED,
                     max_length=MAX_LENGTH, report_to=[], save_strategy="no", use_cpu=device == "cpu",
                     logging_steps=1, **overrides)
    peft_cfg = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                          target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
    timer = _step_timer()
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_cfg,
                         callbacks=[timer])
    counts: dict = {}
    _instrument(trainer, counts, tok.pad_token_id)
    setup_s = time.perf_counter() - t0
    trainer.train()
    train_s = (timer.end.get(n_steps, time.perf_counter()) - timer.train_begin) if timer.train_begin else 0.0
    steps = _steps_from(timer, counts, n_steps)
    a = trainer.args
    extra = {"overrides": overrides, "bf16_autocast": bool(a.bf16),
             "gradient_checkpointing": bool(a.gradient_checkpointing),
             "packing": bool(a.packing), "padding_free": bool(a.padding_free),
             "assistant_only_loss": bool(a.assistant_only_loss), "optim": str(a.optim),
             "dtype": str(dtype).replace("torch.", ""), "device": device,
             "loss_on": "whole sequence (TRL default assistant_only_loss=False): system, user and assistant tokens"}
    return _side_result("trl", steps, cfg, trainer.model, setup_s, train_s, extra)


# --------------------------------------------------------------------------- eval generation (child)


def eval_generation(spec: dict) -> dict:
    from .generate import generate_batch, grammar_cache, load_model_for_eval
    from .suites import resolve_suite

    t0 = time.perf_counter()
    lm = load_model_for_eval(spec["model"], dtype="auto", device="cpu")
    load_s = time.perf_counter() - t0
    path = resolve_suite("json_extraction")
    rows = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()][:spec["prompts"]]
    convs = [[{"role": "user", "content": r["prompt"]}] for r in rows]
    schemas = [r.get("schema") for r in rows]
    mnt = spec["max_new_tokens"]
    model, tok = lm.model, lm.tokenizer
    from .generate import render_prompts

    plens = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in render_prompts(tok, convs, "default")]
    generate_batch(model, tok, convs[:1], max_new_tokens=2, batch_size=1, progress=False)  # warm-up

    def timed(**kw):
        t, c, load = time.perf_counter(), _cpu_now(), os.getloadavg()[0]
        res = generate_batch(model, tok, convs, max_new_tokens=mnt, progress=False, **kw)
        dt = time.perf_counter() - t
        n = sum(r.n_tokens for r in res)
        return res, {"seconds": dt, "new_tokens": n, "tokens_per_s": n / dt if dt > 0 else 0.0,
                     "cpu_util": (_cpu_now() - c) / dt if dt > 0 else None, "loadavg_1m_at_start": load,
                     "stopped": sum(r.stopped for r in res), "hit_budget": sum(r.hit_budget for r in res)}

    r8, batched = timed(batch_size=spec["batch"])
    r1, single = timed(batch_size=1)
    t = time.perf_counter()
    grammar_cache(tok, model.config.vocab_size)
    grammar_init_s = time.perf_counter() - t
    rc, constrained = timed(batch_size=spec["batch"], schemas=schemas, constrained=True)
    constrained["compile_errors"] = sum(1 for r in rc if r.compile_error)
    constrained["forced_close"] = sum(1 for r in rc if r.forced_close)

    def valid_json(rs):
        ok = 0
        for r in rs:
            try:
                json.loads(r.text)
                ok += 1
            except ValueError:
                pass
        return ok

    constrained["valid_json"] = valid_json(rc)
    batched["valid_json"] = valid_json(r8)
    return {"model": lm.label, "dtype": lm.record.get("dtype"), "load_s": load_s, "prompts": len(convs),
            "prompt_tokens": sum(plens), "prompt_tokens_max": max(plens),
            "prefill_note": "new tokens/s include prefill; the prompts are long next to the answers and "
                            "prefill is compute-bound on CPU, which batching does not shorten",
            "max_new_tokens": mnt, "batch_size": spec["batch"], "batched": batched, "one_by_one": single,
            "constrained": constrained, "grammar_init_s": grammar_init_s,
            "batched_vs_one_by_one": ratio(batched["tokens_per_s"], single["tokens_per_s"]),
            "constrained_vs_unconstrained": ratio(constrained["tokens_per_s"], batched["tokens_per_s"]),
            "same_text_batched_vs_one_by_one": sum(a.text == b.text for a, b in zip(r8, r1)) / len(r8)}


# --------------------------------------------------------------------------- merge (fresh subprocess)


def _merge_probe(run_dir: str, out: str, result_path: str) -> int:
    """`qwenft merge` with a phase breakdown: time and RSS around each step of merge_run.

    Runs as `python -m qwenft.bench _merge_probe RUN OUT RESULT` in a fresh process so
    its imports, wall time and peak RSS are those of the real command.
    """
    import threading

    t_origin = time.perf_counter()
    phases: list[dict] = []
    depth = [0]
    sampler = {"max": 0.0, "at": 0.0, "stop": False}

    def sample():
        while not sampler["stop"]:
            r = _rss_now_mb()
            if r > sampler["max"]:
                sampler["max"], sampler["at"] = r, time.perf_counter() - t_origin
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()

    def record(name, t0, rss0, d):
        phases.append({"phase": name, "depth": d, "start_s": round(t0 - t_origin, 3),
                       "seconds": round(time.perf_counter() - t0, 3), "rss_before_mb": round(rss0),
                       "rss_after_mb": round(_rss_now_mb()), "peak_after_mb": round(_peak_rss_mb())})

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0, rss0, d = time.perf_counter(), _rss_now_mb(), depth[0]
            depth[0] += 1
            try:
                return fn(*a, **kw)
            finally:
                depth[0] -= 1
                record(name, t0, rss0, d)
        return wrapper

    t0, rss0 = time.perf_counter(), _rss_now_mb()
    import peft
    import transformers
    from peft.tuners.tuners_utils import BaseTuner

    from . import card
    from . import merge as m
    record("import torch/transformers/peft/qwenft", t0, rss0, 0)

    m._base_model = timed("load base (_base_model)", m._base_model)
    m._logits = timed("parity logits (_logits)", m._logits)
    m._check_stops = timed("stop check generate (_check_stops)", m._check_stops)
    m.template_parity = timed("template parity", m.template_parity)
    card.write_model_card = timed("model card", card.write_model_card)
    peft.PeftModel.from_pretrained = timed("attach adapter (PeftModel.from_pretrained)", peft.PeftModel.from_pretrained)
    BaseTuner.merge_and_unload = timed("merge_and_unload", BaseTuner.merge_and_unload)
    transformers.PreTrainedModel.save_pretrained = timed("save_pretrained",
                                                         transformers.PreTrainedModel.save_pretrained)
    auto = transformers.AutoModelForCausalLM.from_pretrained
    transformers.AutoModelForCausalLM.from_pretrained = timed("AutoModelForCausalLM.from_pretrained", auto)
    error = None
    try:
        timed("merge_run (total)", m.merge_run)(Path(run_dir), out=Path(out))
    except BaseException as e:  # noqa: BLE001 - reported
        error = f"{type(e).__name__}: {e}"
    sampler["stop"] = True
    th.join(1.0)
    # Which phase held the RSS maximum (innermost phase whose span contains it).
    at = sampler["at"]
    inside = [p for p in phases if p["start_s"] <= at <= p["start_s"] + p["seconds"]]
    peak_phase = max(inside, key=lambda p: p["depth"])["phase"] if inside else None
    res = {"phases": sorted(phases, key=lambda p: p["start_s"]), "sampled_max_rss_mb": round(sampler["max"]),
           "sampled_max_at_s": round(at, 2), "peak_phase": peak_phase, "error": error,
           "self_peak_rss_mb": _peak_rss_mb(), "probe_s": time.perf_counter() - t_origin}
    Path(result_path).write_text(json.dumps(res))
    return 0 if error is None else 1


def _dir_bytes(path: Path, pattern: str = "*.safetensors") -> int:
    return sum(f.stat().st_size for f in Path(path).glob(pattern) if f.is_file())


def measure_merge(run_dir: Path, work: Path, base_path: str) -> dict:
    from .merge import DEFAULT_THRESHOLDS

    out = work / "merged"
    result = work / "merge_probe.json"
    cmd = [sys.executable, "-m", "qwenft.bench", "_merge_probe", str(run_dir), str(out), str(result)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    sys.stdout.flush()
    sys.stderr.flush()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=sys.stderr, stderr=sys.stderr, env=env)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    try:
        probe = json.loads(result.read_text())
    except (OSError, ValueError):
        probe = {"error": f"merge probe exited {proc.returncode} without a result"}
    base_bytes = _dir_bytes(Path(base_path))
    parity = None
    try:
        rec = json.loads((out / "qwenft_merge.json").read_text())
        par = rec.get("parity") or {}
        parity = {"in_memory_fp32_max_abs_logit_diff": (par.get("in_memory_fp32") or {}).get("max_abs_logit_diff"),
                  "exported_max_abs_logit_diff": (par.get("exported") or {}).get("max_abs_logit_diff"),
                  "exported_greedy_agreement": (par.get("exported") or {}).get("greedy_token_agreement"),
                  "threshold_used": par.get("threshold"), "default_threshold_bf16": DEFAULT_THRESHOLDS["bf16"],
                  "would_pass_default": ((par.get("exported") or {}).get("max_abs_logit_diff") or 0)
                  <= DEFAULT_THRESHOLDS["bf16"], "merge_precision": par.get("merge_precision"),
                  "merge_record_seconds": rec.get("seconds")}
    except (OSError, ValueError):
        pass
    return {"parity": parity,"command": "qwenft merge (merge_run, in a fresh process)", "exit_code": proc.returncode,
            "wall_s": wall, "peak_rss_mb": ru.ru_maxrss / 1024, "checkpoint_bytes": base_bytes,
            "checkpoint_gb": base_bytes / 1e9, "merged_bytes": _dir_bytes(out),
            "peak_over_checkpoint": (ru.ru_maxrss * 1024) / base_bytes if base_bytes else None,
            **{k: v for k, v in probe.items() if k != "self_peak_rss_mb"}}


# --------------------------------------------------------------------------- GPU (code path)


def qwen05b_config():
    """Qwen2.5-0.5B's shape (tied embeddings), for random-weight GPU runs."""
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                       rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                       bos_token_id=151643, eos_token_id=151645)


def build_random_05b(dest: Path, tokenizer_src: str) -> dict:
    """Save random-weight 0.5B-shaped weights (bf16) + the real tokenizer to dest (a child runs this)."""
    import torch
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = qwen05b_config()
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(dest, safe_serialization=True)
    tok = AutoTokenizer.from_pretrained(tokenizer_src)
    tok.save_pretrained(dest)
    if not (dest / "chat_template.jinja").is_file() and tok.chat_template:
        (dest / "chat_template.jinja").write_text(tok.chat_template)
    return {"path": str(dest), "params": sum(p.numel() for p in model.parameters())}


# --------------------------------------------------------------------------- orchestration


def _resolve(spec: str) -> dict:
    from .base import resolve_base

    return {"path": resolve_base(spec, allow_stand_in=True).path}


def _fmt(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != 0 and abs(v) < 0.01:
            return f"{v:.2e}"
        return f"{v:.{nd}f}"
    return str(v)


def _table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return "\n".join(lines)


SIDE_LABELS = {
    "qwenft": "qwenft (packing + native loss, default)",
    "trl_defaults": "plain TRL SFTTrainer, defaults",
    "trl_fp32": "plain TRL, fp32 + no grad ckpt",
    "qwenft_padded_trl": "qwenft: packing off + TRL loss",
    "qwenft_packed_trl": "qwenft: packing on + TRL loss",
    "qwenft_padded_native": "qwenft: packing off + native loss",
}


def _finish_side(res: dict, peak_flops: float) -> dict:
    if res.get("error"):
        return res
    s = summarize_steps(res["steps"], res["warmup"])
    n = res["n_params"]["n_flops"]
    s["mfu"] = mfu(s["real_tokens_per_s"], n, peak_flops)
    s["model_tflops_per_s"] = s["real_tokens_per_s"] * training_flops_per_token(n) / 1e12
    res["figures"] = s
    return res


def _training_block(name, model_spec, cfg, data_path, sides, work, peak_flops, device="cpu", dtype="fp32",
                    save_first=False) -> dict:
    """Run each side in its own child; ratios against the TRL sides."""
    from .base import log

    block = {"model": model_spec, "device": device, "dtype": dtype, "warmup_steps": cfg["warmup"],
             "timed_steps": cfg["timed"], "batch_size": cfg["batch"], "gradient_accumulation_steps": cfg["ga"],
             "effective_batch": cfg["batch"] * cfg["ga"], "max_length": MAX_LENGTH, "lora": LORA,
             "learning_rate": LEARNING_RATE, "seed": SEED, "sides": {}}
    for key, kind, opts in sides:
        log(f"bench: training {name} / {key}")
        spec = {"cfg": cfg, "model": model_spec, "data": str(data_path), "device": device, "dtype": dtype,
                "out_dir": str(work / f"{name}-{key}"), "run_name": f"{name}-{key}", **opts}
        fn = train_qwenft_side if kind == "qwenft" else train_trl_side
        res = run_isolated(fn, (spec,), label=f"{name}-{key}", workdir=work)
        block["sides"][key] = _finish_side(res, peak_flops)
        if res.get("error"):
            log(f"bench: {name} / {key} FAILED:\n{res['error']}")
    ok = {k: v for k, v in block["sides"].items() if "figures" in v}
    q = ok.get("qwenft")
    if q:
        block["n_params"] = q["n_params"]
        block["dataset_tokens"] = q.get("dataset_tokens")
    ref = q["figures"]["real_tokens_per_step"] if q else None
    for k, v in ok.items():
        v["same_batches_as_qwenft"] = (v["figures"]["real_tokens_per_step"] == ref) if ref else None
        if k != "qwenft" and q:
            v["qwenft_speedup"] = ratio(q["figures"]["real_tokens_per_s"], v["figures"]["real_tokens_per_s"])
    for t in ("trl_defaults", "trl_fp32"):
        if q and t in ok:
            block[f"ratio_vs_{t}"] = ratio(q["figures"]["real_tokens_per_s"], ok[t]["figures"]["real_tokens_per_s"])
            block[f"trained_ratio_vs_{t}"] = ratio(q["figures"]["trained_tokens_per_s"],
                                                   ok[t]["figures"]["trained_tokens_per_s"])
    # knob contributions (all against packing off + TRL loss)
    base = ok.get("qwenft_padded_trl")
    if base:
        b = base["figures"]["real_tokens_per_s"]
        block["knobs"] = {k: ratio(ok[k]["figures"]["real_tokens_per_s"], b)
                          for k in ("qwenft_packed_trl", "qwenft_padded_native", "qwenft") if k in ok}
    return block


ABLATION = [
    ("qwenft_padded_trl", "qwenft", {"packing": False, "loss_impl": "trl"}),
    ("qwenft_packed_trl", "qwenft", {"packing": True, "loss_impl": "trl"}),
    ("qwenft_padded_native", "qwenft", {"packing": False, "loss_impl": "native"}),
]
MAIN_SIDES = [
    ("qwenft", "qwenft", {"packing": True, "loss_impl": "auto"}),
    ("trl_defaults", "trl", {"trl_overrides": {}}),
    ("trl_fp32", "trl", {"trl_overrides": {"bf16": False, "gradient_checkpointing": False}}),
]


def _targets(result: dict) -> list[dict]:
    """PASS/FAIL per target from what was measured; None (SKIP) where it was not."""
    out = []
    for which, block in result["training"].items():
        if not block or which == "gpu":
            continue
        q = (block["sides"].get("qwenft") or {}).get("figures")
        for ref_key, label in (("trl_defaults", "plain TRL (defaults)"),
                               ("trl_fp32", "plain TRL (fp32, no grad ckpt)")):
            if ref_key not in block["sides"]:
                continue
            r = block.get(f"ratio_vs_{ref_key}")
            pad = q["padding_fraction"] if q else None
            ok = None if r is None or pad is None else (r >= 1.5 and pad <= 0.05)
            why = block["sides"][ref_key].get("error")
            out.append({"target": f"training ({which}): qwenft >= 1.5x {label} on non-padding tokens/s, "
                                  f"padding <= 5%",
                        "measured": (f"{r:.3f}x, padding {pad * 100:.1f}%" if ok is not None
                                     else "not measured" + (f" ({why.strip().splitlines()[-1][:120]})" if why else "")),
                        "value": r, "pass": ok})
    ev = result.get("eval") or {}
    r = ev.get("batched_vs_one_by_one")
    out.append({"target": "eval: batched >= 3x one-by-one (new tokens/s)",
                "measured": f"{r:.3f}x" if r is not None else "not measured",
                "value": r, "pass": None if r is None else r >= 3.0})
    mg = result.get("merge") or {}
    failed = bool(mg) and mg.get("exit_code") != 0
    why = f"merge failed: {str(mg.get('error'))[:160]}" if failed else None
    w = mg.get("wall_s") if mg.get("exit_code") == 0 else None
    out.append({"target": "merge: under 60 s (whole `qwenft merge` process)",
                "measured": why or f"{_fmt(w, 1)} s", "value": w,
                "pass": False if failed else (None if w is None else w < 60.0)})
    pk = mg.get("peak_over_checkpoint") if mg.get("exit_code") == 0 else None
    out.append({"target": "merge: peak RSS <= 2.5x bf16 checkpoint size",
                "measured": why or ((f"{_fmt(mg.get('peak_rss_mb', 0) / 1024, 2)} GiB = {_fmt(pk, 2)}x "
                                     f"{_fmt(mg.get('checkpoint_gb'), 2)} GB") if pk else "-"),
                "value": pk, "pass": False if failed else (None if pk is None else pk <= 2.5)})
    return out


def _markdown(result: dict) -> str:
    m = result["machine"]
    mm = result["matmul_peak"]
    L = [f"# qwenft bench ({result['mode']})", "",
         f"{result['date']} - {m['cpu']}, {m['cores']} cores (load average {m.get('loadavg_1m_at_start', 0):.1f} "
         f"at start), torch {m['torch']}, transformers "
         f"{m['transformers']}, trl {m['trl']}, peft {m['peft']}. Matmul peak (fp32 torch.mm "
         f"{mm['n']}x{mm['n']}, best of {mm['repeats']}, {mm['threads']} threads): {mm['gflops']:.1f} GFLOP/s.",
         "", f"Dataset: {result['dataset']['rows']} generated chat rows, lengths log-normal (median "
         f"{result['dataset']['median']}, sigma {result['dataset']['sigma']}) truncated to "
         f"[{result['dataset']['lo']}, {result['dataset']['hi']}] tokens, "
         f"{result['dataset']['multi_turn_fraction']:.0%} multi-turn. Whole bench: "
         f"{result.get('total_s', 0) / 60:.1f} min."]
    for name, block in result["training"].items():
        if not block:
            continue
        if "sides" not in block:
            L += ["", f"## Training: {name}: failed ({str(block.get('error'))[-300:]})"]
            continue
        n = block.get("n_params", {})
        dt = block.get("dataset_tokens") or {}
        L += ["", f"## Training: {name} ({block['model']}, {block['device']}, {block['dtype']})", "",
              f"N = {n.get('n_flops', 0) / 1e6:.1f} M matmul parameters ({n.get('total', 0) / 1e6:.1f} M total, "
              f"head {n.get('head', 0) / 1e6:.1f} M, tied={n.get('tied')}); batch {block['batch_size']} x "
              f"grad accum {block['gradient_accumulation_steps']}; {block['timed_steps']} timed steps after "
              f"{block['warmup_steps']} warm-up; max length {block['max_length']}; LoRA r=16 alpha 32 all-linear."
              + (f" Rows tokenized: min {dt.get('min')}, median {dt.get('p50'):.0f}, p90 {dt.get('p90'):.0f}, "
                 f"max {dt.get('max')} tokens; qwenft trains {dt.get('trained_fraction', 0):.0%} of them."
                 if dt else ""),
              ""]
        rows = []
        for key, s in block["sides"].items():
            f = s.get("figures")
            if not f:
                rows.append([SIDE_LABELS.get(key, key), "FAILED", "", "", "", "", "", "", ""])
                continue
            rows.append([SIDE_LABELS.get(key, key), f["real_tokens_per_s"], f["trained_tokens_per_s"],
                         f"{f['padding_fraction'] * 100:.1f}%", f["step_s"], s["peak_rss_mb"],
                         f"{f['mfu'] * 100:.2f}%", _fmt(s.get("qwenft_speedup"), 2) if key != "qwenft" else "1.00",
                         _fmt(s.get("same_batches_as_qwenft")), _fmt(f.get("cpu_util"), 2)])
        L.append(_table(["side", "real tok/s", "loss tok/s", "padding", "s/step", "peak RSS MB", "MFU",
                         "qwenft / this", "same batches", "cores used"], rows))
        if block.get("knobs"):
            L += ["", "Knobs (real tokens/s relative to qwenft with packing off + TRL loss): " + ", ".join(
                f"{SIDE_LABELS.get(k, k).replace('qwenft: ', '')} {_fmt(v, 2)}x" for k, v in block["knobs"].items())]
        for k, why in (block.get("not_run") or {}).items():
            L += ["", f"Not run here: {SIDE_LABELS.get(k, k)}: {why}."]
    L += ["", "Plain TRL's defaults on CPU: bf16 autocast (this CPU's bf16 matmul: "
          f"{mm.get('bf16_gflops', 0):.1f} GFLOP/s vs {mm['gflops']:.1f} fp32) and gradient checkpointing on, "
          "padded batches, TRL's chunked output-head loss over every position, loss on the whole sequence "
          "(assistant_only_loss=False). 'loss tok/s' counts positions with a label: TRL's include system and "
          "user tokens, qwenft's only assistant turns. Same batches: every side saw the same examples in the "
          "same order (same real tokens per step). 'cores used': the process's CPU seconds over the timed "
          "wall seconds (2.00 = both cores of an idle 2-core machine; lower = other work competed).", "",
          "FLOPs: " + result["flops_formula"]]
    ev = result.get("eval")
    if ev and not ev.get("error"):
        L += ["", f"## Eval generation ({ev['model'][:60]}..., {ev['dtype']}, {ev['prompts']} json_extraction prompts, "
              f"max {ev['max_new_tokens']} new tokens)", ""]
        L.append(_table(["mode", "new tokens", "seconds", "new tok/s", "stopped", "cores used"], [
            [label, ev[k]["new_tokens"], ev[k]["seconds"], ev[k]["tokens_per_s"], ev[k]["stopped"],
             _fmt(ev[k].get("cpu_util"), 2)]
            for k, label in (("batched", f"batched ({ev['batch_size']})"), ("one_by_one", "one by one"),
                             ("constrained", f"constrained, batched ({ev['batch_size']})"))]))
        L += ["", f"batched / one-by-one: {_fmt(ev['batched_vs_one_by_one'], 2)}x; constrained / unconstrained: "
              f"{_fmt(ev['constrained_vs_unconstrained'], 2)}x (grammar set-up once: {ev['grammar_init_s']:.1f} s); "
              f"same text batched vs one-by-one: {ev['same_text_batched_vs_one_by_one']:.0%}. Prompts: "
              f"{ev['prompt_tokens']} tokens in all (longest {ev['prompt_tokens_max']}); the times include "
              f"prefill, which is compute-bound on CPU and not shortened by batching."]
    mg = result.get("merge")
    if mg and mg.get("phases"):
        L += ["", f"## Merge (stand-in run, bf16 export): {mg['wall_s']:.1f} s, peak RSS {mg['peak_rss_mb']:.0f} MB "
              f"(checkpoint {mg['checkpoint_gb']:.2f} GB; peak reached in: {mg.get('peak_phase')})", ""]
        L.append(_table(["phase", "start s", "seconds", "RSS before MB", "RSS after MB", "peak after MB"], [
            [("  " * p["depth"]) + p["phase"], p["start_s"], p["seconds"], p["rss_before_mb"], p["rss_after_mb"],
             p["peak_after_mb"]] for p in mg["phases"]]))
        par = mg.get("parity") or {}
        if par:
            L += ["", f"Parity of this merge: exported bf16 vs base + adapter max |logit diff| "
                  f"{_fmt(par.get('exported_max_abs_logit_diff'), 3)} (merge arithmetic: "
                  f"{par.get('merge_precision')}); the bench runs it with "
                  f"parity_threshold {par.get('threshold_used')} so the timing covers the whole command; with the "
                  f"default {par.get('default_threshold_bf16')} it would "
                  f"{'pass' if par.get('would_pass_default') else 'FAIL'}."]
    elif mg:
        L += ["", f"## Merge: failed ({mg.get('error')})"]
    gpu = result["training"].get("gpu")
    if gpu:
        L += ["", f"GPU MFU against the H200 bf16 dense peak {H200_BF16_DENSE_PEAK / 1e12:.0f} TFLOP/s."]
    L += ["", "## Targets", ""]
    for t in result["targets"]:
        verdict = "SKIP" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        L.append(f"- {verdict}: {t['target']} - measured {t['measured']}")
    return "\n".join(L) + "\n"


def cli_bench(a) -> int:
    quick = bool(getattr(a, "quick", False))
    skip_stand_in = bool(getattr(a, "skip_stand_in", False)) or quick
    out_dir = Path(getattr(a, "out", None) or "outputs/bench")
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = MODES["quick" if quick else "default"]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    from .base import STAND_IN, TINY, log

    t_all = time.perf_counter()
    # Import what the children use, compute nothing: every forked child starts from here.
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    from trl import SFTConfig, SFTTrainer  # noqa: F401

    from . import trainer as _qt  # noqa: F401

    work = Path(tempfile.mkdtemp(prefix="qwenft-bench-"))
    result: dict = {"bench": "qwenft", "mode": "quick" if quick else "default",
                    "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "machine": {**machine_info(), "loadavg_1m_at_start": os.getloadavg()[0]},
                    "flops_formula": FLOPS_FORMULA}
    try:
        # Preparing a base (first use) computes with torch: never in this parent process.
        tiny = run_isolated(_resolve, (TINY,), label="resolve-tiny", workdir=work)
        if tiny.get("error"):
            raise RuntimeError(tiny["error"])
        log("bench: measuring the matmul peak")
        mmk = mode["matmul"]
        mm = run_isolated(_measure_matmul_peak, (mmk["n"], mmk["repeats"], mmk["per_repeat"]), label="matmul",
                          workdir=work)
        if mm.get("error"):
            raise RuntimeError(mm["error"])
        result["matmul_peak"] = mm
        d = mode["data"]
        rows = make_conversations(d["rows"], seed=SEED, median=d["median"], sigma=d["sigma"], lo=d["lo"], hi=d["hi"])
        data_path = work / "bench_chat.jsonl"
        data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        result["dataset"] = {**d, "seed": SEED, "path": "generated (temp JSONL)",
                             "multi_turn_fraction": sum(len(r["messages"]) > 2 for r in rows) / len(rows)}
        result["training"] = {}
        peak = mm["flops"]
        result["training"]["tiny"] = _training_block("tiny", TINY, mode["tiny"], data_path, MAIN_SIDES + ABLATION,
                                                     work, peak)
        if not skip_stand_in:
            base = run_isolated(_resolve, (STAND_IN,), label="resolve-stand-in", workdir=work)
            if base.get("error"):
                raise RuntimeError(base["error"])
            sides = MAIN_SIDES if os.environ.get(STAND_IN_TRL_DEFAULTS_ENV) == "1" else [
                x for x in MAIN_SIDES if x[0] != "trl_defaults"]
            result["training"]["stand_in"] = _training_block("stand_in", STAND_IN, mode["stand_in"], data_path,
                                                             sides, work, peak)
            if len(sides) < len(MAIN_SIDES):
                result["training"]["stand_in"]["not_run"] = {
                    "trl_defaults": f"TRL's CPU defaults autocast to bf16, whose matmuls run several times slower "
                                    f"than fp32 on this CPU (figures below), so one stand-in step takes many "
                                    f"minutes; set {STAND_IN_TRL_DEFAULTS_ENV}=1 to run it"}
            log("bench: eval generation on the stand-in")
            from .config import EvalConfig

            ev = run_isolated(eval_generation, ({"model": STAND_IN, "prompts": EVAL_PROMPTS,
                                                 "batch": EvalConfig().batch_size,
                                                 "max_new_tokens": EVAL_MAX_NEW_TOKENS},), label="eval", workdir=work)
            result["eval"] = ev
            q = result["training"]["stand_in"]["sides"].get("qwenft", {})
            if q.get("run_dir"):
                log("bench: merging the stand-in run (fresh process)")
                result["merge"] = measure_merge(Path(q["run_dir"]), work, base["path"])
        if mm.get("cuda_available") and not quick:
            result["training"]["gpu"] = _gpu_block(work, data_path, tiny_path_for_tok=tiny["path"])
        # a second matmul measurement at the end: the peak is the best seen (CPU shared / noisy)
        mm2 = {"error": "skipped"} if quick else run_isolated(
            _measure_matmul_peak, (mmk["n"], mmk["repeats"], mmk["per_repeat"]), label="matmul2", workdir=work)
        if not mm2.get("error") and mm2["flops"] > mm["flops"]:
            mm.update({k: mm2[k] for k in ("flops", "gflops", "median_gflops")})
            for block in result["training"].values():
                if block and block.get("device") == "cpu":
                    for s in block["sides"].values():
                        if "figures" in s:
                            _finish_side(s, mm["flops"])
        result["targets"] = _targets(result)
        result["total_s"] = time.perf_counter() - t_all
        result["machine"]["loadavg_1m_at_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    md = _markdown(result)
    (out_dir / "bench.md").write_text(md)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(md)
    print(json.dumps(result, separators=(",", ":"), default=str))
    sys.stdout.flush()
    return 0


def _gpu_block(work: Path, data_path: Path, tiny_path_for_tok: str) -> dict:
    """Random-weight 0.5B shape in bf16 on the GPU: qwenft vs TRL defaults (code path for GPU machines)."""
    from .base import log

    log("bench: GPU present: random-weight Qwen2.5-0.5B shape, bf16")
    dest = work / "random-05b"
    made = run_isolated(build_random_05b, (dest, tiny_path_for_tok), label="random05b", workdir=work)
    if made.get("error"):
        return {"error": made["error"]}
    cfg = MODES["default"]["gpu"]
    sides = [("qwenft", "qwenft", {"packing": True, "loss_impl": "auto"}),
             ("trl_defaults", "trl", {"trl_overrides": {}})]
    block = _training_block("gpu", str(dest), cfg, data_path, sides, work, H200_BF16_DENSE_PEAK,
                            device="cuda", dtype="bf16")
    block["peak_flops"] = H200_BF16_DENSE_PEAK
    block["peak_note"] = "H200 bf16 dense peak (NVIDIA spec), not measured"
    return block


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "_merge_probe":
        sys.exit(_merge_probe(*sys.argv[2:5]))
    print("usage: python -m qwenft.cli bench [--quick] [--out DIR] [--skip-stand-in]", file=sys.stderr)
    sys.exit(2)
