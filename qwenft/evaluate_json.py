"""Run the JSON suites: generate (unconstrained and/or schema-constrained), score, aggregate.

Generation is qwenft.generate.generate_batch; scoring is qwenft.jsonchecks.score_sample,
so `qwenft eval` and the shipped lm-eval task `qwenft_json_extraction` score the same
text the same way.
"""

from __future__ import annotations

import time
from pathlib import Path

from .errors import UserError, did_you_mean
from .generate import generate_batch
from .jsonchecks import aggregate_by_slice, score_sample
from .suites import SuiteRow, load_suite, resolve_suite

MODES = ("unconstrained", "constrained")


def check_modes(modes) -> list[str]:
    modes = list(modes)
    for m in modes:
        if m not in MODES:
            raise UserError(f"Unknown decoding mode '{m}'.{did_you_mean(m, MODES)} Use "
                            f"{' and/or '.join(MODES)}.")
    if not modes:
        raise UserError(f"No decoding mode given; use {' and/or '.join(MODES)}.")
    return modes


def load_suites(names: list[str], repo_root: Path | None = None) -> dict[str, list[SuiteRow]]:
    """Resolve and validate every suite before anything is generated (row-numbered errors)."""
    out = {}
    for name in names:
        path = resolve_suite(name, repo_root)
        key = Path(name).stem if Path(str(name)).suffix else str(name)
        out[key] = load_suite(path)
    return out


def select_rows(rows: list[SuiteRow], *, slices=None, limit: int | None = None,
                suite: str = "suite") -> list[SuiteRow]:
    """Rows of the wanted slices (all when empty), then the first `limit` of them."""
    if slices:
        known = sorted({r.slice for r in rows})
        for s in slices:
            if s not in known:
                raise UserError(f"Suite '{suite}' has no slice '{s}'.{did_you_mean(s, known)} Its "
                                f"slices are: {', '.join(known)}.")
        rows = [r for r in rows if r.slice in set(slices)]
    if limit is not None:
        if limit < 1:
            raise UserError(f"limit must be at least 1 (got {limit}).")
        rows = rows[:limit]
    return rows


def _record(row: SuiteRow, mode: str, gen, scores: dict) -> dict:
    return {"id": row.id, "slice": row.slice, "mode": mode, "source": f"{row.source}:{row.line}",
            "prompt": gen.prompt, "output": gen.text, "n_tokens": gen.n_tokens,
            "stopped": gen.stopped, "hit_budget": gen.hit_budget,
            "forced_close": gen.forced_close, "compile_error": gen.compile_error,
            "seconds": round(gen.seconds, 4), "gold": row.gold if row.has_gold else None,
            "has_gold": row.has_gold, "scores": scores}


def run_json_suite(model, tokenizer, suite_rows: list[SuiteRow], *,
                   modes=MODES, max_new_tokens: int, batch_size: int,
                   system_policy: str = "default", limit: int | None = None, slices=None,
                   suite_name: str = "suite", progress: bool = True) -> dict:
    """{mode: {"metrics": aggregate_by_slice(...), "compile_errors", "forced_closes",
    "seconds", "n", "samples": [per-sample records]}} for one suite.

    A row wrapped up by the constrained decoder's closing bonus (forced_close) is
    scored with stopped=False: its end was not the model's own, so it never counts as
    a clean stop, though its JSON may still be valid.
    """
    modes = check_modes(modes)
    rows = select_rows(suite_rows, slices=slices, limit=limit, suite=suite_name)
    convs = [r.messages for r in rows]
    out = {}
    for mode in modes:
        t0 = time.time()
        gens = generate_batch(model, tokenizer, convs, max_new_tokens=max_new_tokens,
                              batch_size=batch_size, system_policy=system_policy,
                              schemas=[r.schema for r in rows], constrained=(mode == "constrained"),
                              progress=progress, desc=f"{suite_name} [{mode}]")
        seconds = time.time() - t0
        samples, records = [], []
        for row, gen in zip(rows, gens):
            s = score_sample(gen.text, schema=row.schema, gold=row.gold, has_gold=row.has_gold,
                             stopped=gen.stopped and not gen.forced_close, n_tokens=gen.n_tokens)
            samples.append(s)
            records.append(_record(row, mode, gen, s))
        out[mode] = {
            "n": len(rows),
            "metrics": aggregate_by_slice(samples, [r.slice for r in rows], seconds=seconds),
            "compile_errors": sum(1 for g in gens if g.compile_error),
            "forced_closes": sum(1 for g in gens if g.forced_close),
            "hit_budget": sum(1 for g in gens if g.hit_budget),
            "seconds": round(seconds, 3),
            "samples": records,
        }
    return out
