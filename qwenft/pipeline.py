"""After training: merge, evaluate, check gates, push — as a recipe's merge/eval/push blocks say."""

from __future__ import annotations

import json
from pathlib import Path

from .base import log
from .errors import UserError


def gate_view(results: dict, model: str = "tuned") -> dict:
    """Flatten eval results for gates: `<suite>.<mode>.<slice>.<metric>` and `lm_eval.<task>.<metric>`."""
    models = results.get("models") or {}
    entry = models.get(model) or models.get("model") or {}
    view: dict = {}
    for suite, modes in (entry.get("suites") or {}).items():
        for mode, res in modes.items():
            view.setdefault(suite, {})[mode] = res.get("metrics", {})
    lm = entry.get("lm_eval") or {}
    summary = lm.get("summary") or lm.get("results") or {}
    if summary:
        view["lm_eval"] = summary
    return view


def run_results(run_dir: Path) -> dict | None:
    p = Path(run_dir) / "eval" / "results.json"
    return json.loads(p.read_text()) if p.is_file() else None


def run_dir_of(folder: Path) -> Path | None:
    """The run a merged checkpoint came from (its qwenft_merge.json says)."""
    rec = Path(folder) / "qwenft_merge.json"
    if rec.is_file():
        return Path(json.loads(rec.read_text())["run_dir"])
    if (Path(folder) / "run.json").is_file():
        return Path(folder)
    return None


def gates_and_results(folder: Path) -> tuple[dict, dict | None]:
    run = run_dir_of(folder)
    if run is None or not (run / "run.json").is_file():
        return {}, None
    recipe = json.loads((run / "run.json").read_text())["recipe"]
    results = run_results(run)
    return recipe["eval"].get("gates") or {}, gate_view(results) if results else None


def evaluate_run(run_dir: Path, recipe) -> dict | None:
    from .card import add_eval_to_card
    from .evaluation import evaluate

    ev = recipe.eval
    if not ev.suites and not ev.lm_eval_tasks:
        return None
    results = evaluate(str(run_dir), suites=ev.suites, lm_eval_tasks=ev.lm_eval_tasks, modes=ev.modes,
                       max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, limit=ev.limit,
                       system_policy=recipe.data.system_prompt, out_dir=Path(run_dir) / "eval",
                       compare_base=ev.compare_base, slices=ev.slices or None)
    merged = Path(run_dir) / "merged"
    if (merged / "README.md").is_file():
        add_eval_to_card(merged / "README.md", (Path(run_dir) / "eval" / "comparison.md").read_text())
    return results


def after_training(run_dir: Path, recipe, *, merge: bool, evaluate: bool) -> None:
    """Merge / evaluate / push as asked; a push needs all three and respects the gates."""
    from .trainer import is_main_process

    if not is_main_process():
        return
    push = recipe.push.repo_id
    if push:
        merge = evaluate = True
    merged = None
    if merge and recipe.merge.enabled:
        from .merge import merge_run

        merged = merge_run(run_dir)
    results = evaluate_run(run_dir, recipe) if evaluate else None
    if push:
        if merged is None:
            raise UserError("push.repo_id is set but merge.enabled is false: only merged checkpoints are "
                            "pushed. Enable merge or push the folder yourself with `qwenft push`.")
        from .hub import push_folder

        view = gate_view(results) if results else None
        push_folder(merged, push, private=recipe.push.private, revision=recipe.push.revision,
                    gates=recipe.eval.gates or None, results=view, force=recipe.push.force, log=log)
