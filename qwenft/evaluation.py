"""The library behind `qwenft eval`: evaluate a target (and its base) on JSON suites and lm-eval.

Order of work, so that mistakes cost seconds, not a model load:
  1. every suite is loaded and validated (row-numbered errors), modes/slices checked,
     lm-eval task names and data reachability checked;
  2. per model (the target, then its base when comparing): load, JSON suites in each
     mode, lm-eval tasks, free the model;
  3. results.json, samples_<model>_<suite>_<mode>.jsonl, lm-eval's own JSON
     (lm_eval/<model>/...), comparison.md and comparison.png in out_dir.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

from .base import library_versions, log
from .errors import UserError
from .evaluate_json import MODES, check_modes, load_suites, run_json_suite
from .generate import ADAPTER_CONFIG, RUN_FILE, base_of, describe_target, load_model_for_eval
from .report_eval import write_markdown, write_png
from .runs import write_json_atomic

DEFAULTS = {"suites": ["json_extraction", "schema_following"], "lm_eval_tasks": [],
            "modes": list(MODES), "max_new_tokens": 256, "batch_size": 16, "limit": None,
            "slices": [], "compare_base": True, "system_policy": "default"}


def default_eval_settings_from_run(run_dir) -> dict:
    """The eval settings a run was trained with (recipe["eval"] + the data system policy).

    Accepts the run directory or its adapter/ directory. Keys: suites, lm_eval_tasks,
    modes, max_new_tokens, batch_size, limit, slices, compare_base, system_policy.
    """
    p = Path(run_dir)
    run_file = p / RUN_FILE if (p / RUN_FILE).is_file() else p.parent / RUN_FILE
    if not run_file.is_file():
        raise UserError(f"{p} is not a qwenft run directory ({RUN_FILE} is missing); pass the "
                        f"eval settings explicitly.")
    try:
        run = json.loads(run_file.read_text())
    except ValueError as e:
        raise UserError(f"{run_file} is unreadable ({e}).") from None
    recipe = run.get("recipe") or {}
    ev = recipe.get("eval") or {}
    out = dict(DEFAULTS)
    for k in ("suites", "lm_eval_tasks", "modes", "max_new_tokens", "batch_size", "limit", "slices",
              "compare_base"):
        if k in ev and ev[k] is not None:
            out[k] = ev[k]
    policy = (recipe.get("data") or {}).get("system_prompt")
    if policy:
        out["system_policy"] = policy
    return out


def _stage(msg: str) -> None:
    log("=" * 70)
    log(msg)
    log("=" * 70)


def _check_slices(suite_rows: dict, slices) -> dict[str, list[str] | None]:
    """Per-suite slice filter; a slice no suite has is a mistake, one some suites lack is not."""
    if not slices:
        return {name: None for name in suite_rows}
    known = {name: {r.slice for r in rows} for name, rows in suite_rows.items()}
    everywhere = set().union(*known.values()) if known else set()
    from .errors import did_you_mean

    for s in slices:
        if s not in everywhere:
            raise UserError(f"No suite has a slice '{s}'.{did_you_mean(s, sorted(everywhere))} "
                            f"Slices: {', '.join(sorted(everywhere))}.")
    return {name: [s for s in slices if s in known[name]] for name in suite_rows}


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")


def _evaluate_one(name: str, spec, *, suite_rows, slice_filter, lm_eval_tasks, modes, max_new_tokens,
                  batch_size, limit, system_policy, out_dir: Path, step: str) -> dict:
    _stage(f"{step} loading {name}: {spec if isinstance(spec, str) else spec.requested}")
    loaded = load_model_for_eval(spec)
    log(f"{name} = {loaded.label}")
    entry = {"label": loaded.label, "record": loaded.record, "suites": {}, "lm_eval": None,
             "seconds": {"load": loaded.record.get("load_seconds")}, "files": {}}
    for suite, rows in suite_rows.items():
        wanted = slice_filter[suite]
        if wanted == []:
            log(f"{name}: skipping suite {suite} (none of the requested slices)")
            continue
        _stage(f"{step} {name}: suite {suite} ({', '.join(modes)})")
        t0 = time.time()
        res = run_json_suite(loaded.model, loaded.tokenizer, rows, modes=modes,
                             max_new_tokens=max_new_tokens, batch_size=batch_size,
                             system_policy=system_policy, limit=limit, slices=wanted,
                             suite_name=suite)
        for mode, r in res.items():
            path = out_dir / f"samples_{name}_{suite}_{mode}.jsonl"
            _write_jsonl(path, r.pop("samples"))
            entry["files"][f"{suite}/{mode}"] = path.name
            m = r["metrics"]["all"]
            log(f"{name} {suite} [{mode}]: schema_valid {m.get('schema_valid_rate')}, "
                f"field_f1 {m.get('field_f1')}, {r['seconds']} s")
        entry["suites"][suite] = res
        entry["seconds"][f"suite:{suite}"] = round(time.time() - t0, 2)
    if lm_eval_tasks:
        from .lmeval import run_lm_eval

        _stage(f"{step} {name}: lm-eval {', '.join(lm_eval_tasks)}")
        lm = run_lm_eval(loaded.model, loaded.tokenizer, lm_eval_tasks, batch_size=batch_size,
                         limit=limit, system_policy=system_policy,
                         out_dir=out_dir / "lm_eval", model_name=name, max_gen_toks=max_new_tokens,
                         checked=True)
        lm.pop("raw", None)  # lm-eval's own file has it all
        lm["summary"] = lm["metrics"]  # the name pipeline.gate_view reads
        entry["lm_eval"] = lm
        entry["seconds"]["lm_eval"] = lm["seconds"]
    del loaded
    gc.collect()
    return entry


def evaluate(target: str, *, suites: list[str], lm_eval_tasks: list[str], modes=MODES,
             max_new_tokens: int = 256, batch_size: int = 16, limit: int | None = None,
             system_policy: str = "default", out_dir: Path, compare_base: bool = True,
             slices=None) -> dict:
    """Evaluate `target` (and its base, when comparing); write the report files; return results."""
    t_start = time.time()
    out_dir = Path(out_dir)
    _stage("[checks] suites, modes, slices, lm-eval tasks")
    modes = check_modes(modes)
    if max_new_tokens < 1 or batch_size < 1:
        raise UserError("max_new_tokens and batch_size must be at least 1.")
    if not suites and not lm_eval_tasks:
        raise UserError("Nothing to evaluate: give at least one suite or lm-eval task.")
    suite_rows = load_suites(list(suites))
    slice_filter = _check_slices(suite_rows, slices)
    if lm_eval_tasks:
        from .lmeval import check_tasks

        check_tasks(list(lm_eval_tasks))
    desc = describe_target(str(target))
    base = base_of(str(target)) if compare_base and desc["kind"] != "base" else None
    if compare_base and desc["kind"] != "base" and base is None:
        log("no base recorded for this target: evaluating it alone")
    models = [("tuned", str(target)), ("base", base)] if base is not None else [("model", str(target))]
    out_dir.mkdir(parents=True, exist_ok=True)
    # A killed eval must not leave an older results.json for gates/cards to pick up.
    (out_dir / "results.json").unlink(missing_ok=True)

    settings = {"target": str(target), "suites": list(suites), "lm_eval_tasks": list(lm_eval_tasks),
                "modes": modes, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                "limit": limit, "system_policy": system_policy, "slices": list(slices or []),
                "compare_base": compare_base}
    results = {"settings": settings, "models": {}, "versions": library_versions()}
    for k, (name, spec) in enumerate(models, start=1):
        results["models"][name] = _evaluate_one(
            name, spec, suite_rows=suite_rows, slice_filter=slice_filter,
            lm_eval_tasks=list(lm_eval_tasks), modes=modes, max_new_tokens=max_new_tokens,
            batch_size=batch_size, limit=limit, system_policy=system_policy, out_dir=out_dir,
            step=f"[{k}/{len(models)}]")
    results["seconds"] = round(time.time() - t_start, 2)
    results["files"] = {"results": "results.json", "comparison_md": "comparison.md",
                        "comparison_png": "comparison.png"}
    write_markdown(results, out_dir / "comparison.md")
    write_png(results, out_dir / "comparison.png")
    # Written last and atomically: its presence means the whole evaluation finished.
    write_json_atomic(out_dir / "results.json", results)
    _stage(f"[done] {out_dir / 'comparison.md'} ({results['seconds']} s)")
    return results


def _run_dir_of(target: str) -> Path | None:
    p = Path(target)
    if (p / RUN_FILE).is_file():
        return p
    if (p / ADAPTER_CONFIG).is_file() and (p.parent / RUN_FILE).is_file():
        return p.parent
    return None


def cli_eval(a) -> int:
    """`qwenft eval [TARGET]`: a run's own eval settings (recipe) unless flags override them."""
    from .runs import latest_run

    target = a.target
    if not target:
        latest = latest_run()
        if latest is None:
            raise UserError("No target given and no run found under outputs/. Pass a Hub id, a merged "
                            "checkpoint, a run or adapter directory, or 'stand-in'.")
        target = str(latest)
        log(f"no target given: evaluating the latest run, {target}")
    run_dir = _run_dir_of(target)
    s = default_eval_settings_from_run(run_dir) if run_dir else dict(DEFAULTS)
    overrides = {"suites": getattr(a, "suites", None), "lm_eval_tasks": getattr(a, "tasks", None),
                 "modes": getattr(a, "modes", None), "limit": getattr(a, "limit", None),
                 "batch_size": getattr(a, "batch_size", None),
                 "max_new_tokens": getattr(a, "max_new_tokens", None),
                 "compare_base": getattr(a, "compare_base", None)}
    s.update({k: v for k, v in overrides.items() if v is not None})
    if getattr(a, "out", None):
        out = Path(a.out)
    elif run_dir:
        out = run_dir / "eval"
    else:
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(str(target)).name or "model")
        out = Path("outputs") / "eval" / slug
    evaluate(target, suites=s["suites"], lm_eval_tasks=s["lm_eval_tasks"], modes=s["modes"],
             max_new_tokens=s["max_new_tokens"], batch_size=s["batch_size"], limit=s["limit"],
             system_policy=s["system_policy"], out_dir=out, compare_base=s["compare_base"],
             slices=s["slices"] or None)
    print(out / "comparison.md")
    return 0
