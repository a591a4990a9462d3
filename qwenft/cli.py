"""The `qwenft` command: base, validate, train, merge, eval, push, bench, demo."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from .errors import UserError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _add_recipe_args(p):
    p.add_argument("recipe", help="YAML recipe (configs/*.yaml, recipes/*.yaml)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, typed like the YAML")


def cmd_base(a) -> int:
    from .base import prepare_stand_in, stand_in_dir, verify_stand_in

    if a.action == "prepare":
        path = prepare_stand_in(Path(a.dest) if a.dest else None, force=a.force)
        print(path)
        return 0
    path = Path(a.dest) if a.dest else stand_in_dir()
    why = verify_stand_in(path, full=True)
    if why:
        raise UserError(f"The stand-in at {path} does not verify: {why}. Run `qwenft base prepare`.")
    print(path)
    return 0


def cmd_validate(a) -> int:
    import json

    from .config import describe, load_recipe

    if a.keys:
        print("\n".join(describe()))
        return 0
    if not a.recipe:
        raise UserError("qwenft validate needs a recipe file (or --keys to list every recipe key).")
    recipe = load_recipe(a.recipe, a.overrides)  # recipe errors come before the heavy imports
    from .template import show_trained
    from .trainer import estimate, prepare

    p = prepare(recipe)
    print(f"recipe: {a.recipe} - OK")
    print(f"base: {p.base.label}")
    s = p.data.summary()
    for src in s["sources"]:
        print(f"data: {src['path']} ({src['format']}): {src['rows']} rows, {src['valid']} valid, {src['bad']} bad, weight {src['weight']}")
    if s["skipped_rows"]:
        print(f"skipped {s['skipped_rows']} bad rows (on_bad_row: skip):")
        for b in s["skipped"]:
            print(f"  {b}")
    for i, ex in enumerate(p.train_examples[:2]):
        print(f"\n--- example {i + 1} ({ex.meta['source']}:{ex.meta['line']}); trained tokens in [[ ]] ---")
        print(show_trained(p.tokenizer, ex))
    print("\nmask audit: " + json.dumps(p.audit.to_dict()))
    print("estimate: " + json.dumps(estimate(p)))
    if p.audit.failures:
        raise UserError("The mask audit fails: " + "; ".join(p.audit.failures) + ".")
    return 0


def cmd_train(a) -> int:
    from .config import load_recipe
    from .trainer import train

    recipe = load_recipe(a.recipe, a.overrides)
    run_dir = train(recipe)
    from .pipeline import after_training

    after_training(run_dir, recipe, merge=a.merge, evaluate=a.eval)
    print(run_dir)
    return 0


def cmd_merge(a) -> int:
    from .merge import merge_run

    out = merge_run(Path(a.run_dir), out=Path(a.out) if a.out else None, dtype=a.dtype,
                    onto=a.onto, max_shard_size=a.max_shard_size)
    print(out)
    return 0


def cmd_eval(a) -> int:
    from .evaluation import cli_eval

    return cli_eval(a)


def cmd_push(a) -> int:
    from .hub import cli_push
    from .pipeline import gates_and_results

    # Gates come from the recipe of the run the folder was merged from; results from its eval.
    gates, results = gates_and_results(Path(a.folder))
    if gates:
        a.gates, a.results = gates, results
    return cli_push(a)


def cmd_bench(a) -> int:
    from .bench import cli_bench

    return cli_bench(a)


def cmd_demo(a) -> int:
    from .demo import cli_demo

    return cli_demo(a)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qwenft", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("base", help="prepare or verify the offline stand-in base")
    p.add_argument("action", choices=["prepare", "verify"])
    p.add_argument("--dest", help="directory (default: the per-user cache, $QWENFT_CACHE)")
    p.add_argument("--force", action="store_true", help="rebuild even if a valid copy exists")
    p.set_defaults(func=cmd_base)

    p = sub.add_parser("validate", help="check a recipe and its data without training")
    p.add_argument("recipe", nargs="?", help="YAML recipe (configs/*.yaml, recipes/*.yaml)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, typed like the YAML")
    p.add_argument("--keys", action="store_true", help="list every recipe key with its type, default and doc")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("train", help="fine-tune with a recipe")
    _add_recipe_args(p)
    p.add_argument("--merge", action="store_true", help="merge and export after training (always when push.repo_id is set)")
    p.add_argument("--eval", action="store_true", help="evaluate after training (always when push.repo_id is set)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("merge", help="merge a run's adapter into its base and export")
    p.add_argument("run_dir")
    p.add_argument("--out", help="output directory (default RUN_DIR/merged)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None)
    p.add_argument("--onto", choices=["original", "quantized"], default=None,
                   help="QLoRA runs: merge onto the original weights (default) or the 4-bit round-tripped ones")
    p.add_argument("--max-shard-size", default=None)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("eval", help="evaluate a model, run or adapter (and its base)")
    p.add_argument("target", nargs="?", help="Hub id, merged dir, run dir, adapter dir, or 'stand-in' (default: latest run)")
    p.add_argument("--suite", action="append", dest="suites", help="JSON suite name or .jsonl path (repeatable)")
    p.add_argument("--task", action="append", dest="tasks", help="lm-eval task (repeatable)")
    p.add_argument("--mode", action="append", dest="modes", choices=["unconstrained", "constrained"])
    p.add_argument("--limit", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--no-base", dest="compare_base", action="store_false", default=None)
    p.add_argument("--out", help="output directory")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("push", help="push a merged checkpoint to the Hugging Face Hub")
    p.add_argument("folder")
    p.add_argument("--repo-id", required=True)
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--force", action="store_true", help="push even when evaluation gates fail")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("bench", help="training/eval/merge speed, side by side with plain TRL")
    p.add_argument("--quick", action="store_true", help="tiny configuration (used by the tests)")
    p.add_argument("--out", default="outputs/bench")
    p.add_argument("--skip-stand-in", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="the whole job end to end on the embedded default")
    p.add_argument("--recipe", default=None)
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as e:
        rank = os.environ.get("RANK")
        prefix = f"qwenft error (rank {rank}): " if rank not in (None, "0") or os.environ.get("WORLD_SIZE", "1") != "1" else "qwenft error: "
        print(prefix + " ".join(str(e).split()), file=sys.stderr)
        return e.exit_code
    except Exception as e:
        from .errors import is_disk_full

        perm = isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EROFS)
        if is_disk_full(e) or perm:
            what = getattr(e, "filename", None) or "the output directory"
            why = "no space left on device" if not perm else e.strerror
            print(f"qwenft error: cannot write {what}: {why}. Free space or fix the permissions, then "
                  f"rerun; nothing half-written was left where later commands would accept it "
                  f"(completed checkpoints and earlier outputs are intact).", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("qwenft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
