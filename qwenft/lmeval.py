"""lm-evaluation-harness through its Python API, on a model qwenft already loaded.

- Task names are checked before anything expensive: qwenft's shipped tasks
  (eval/tasks) are indexed alone (a few YAMLs, instant); other names are looked up
  in lm-eval's own task tree, first by a quick text scan, then (only if needed) by
  lm-eval's full index, which takes ~20 s to build and is cached on disk per
  lm-eval version. Unknown names get a did-you-mean.
- A task whose data lives on the Hugging Face Hub fails in seconds when the Hub is
  unreachable and the dataset is not cached, instead of after ~49 s of retries.
- The prompt is built as `qwenft eval` builds it: the chat template with qwenft's
  system policy (QwenftHFLM.apply_chat_template), so the shipped JSON task sees the
  same prompts as `qwenft eval`. The policy is recorded in lm-eval's own results.
- Results are saved by lm-eval's EvaluationTracker, in lm-eval's own format
  (results_<date>.json + samples_<task>_<date>.jsonl), under out_dir.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from .base import cache_root, hub_reachable, log
from .errors import UserError, did_you_mean
from .template import apply_system_policy

REPO = Path(__file__).resolve().parents[1]
TASKS_DIR = REPO / "eval" / "tasks"
# `datasets` builders that read local files: a task using one needs no Hub.
LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas", "imagefolder",
                  "audiofolder", "webdataset", "xml", "sql"}


# --------------------------------------------------------------------------- task lookup


def _task_manager(include_path, include_defaults: bool):
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in (include_path if isinstance(include_path, (list, tuple)) else [include_path])
             if p]
    return TaskManager(include_path=paths or None, include_defaults=include_defaults)


def _builtin_root() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


_KEY = r"""^["']?(task|group|tag)["']?[ \t]*:"""
_NAME_LINE = re.compile(_KEY + r"""[ \t]*["']?([^"'\s#\[\]]+)""", re.M)
_TAG_BLOCK = re.compile(r"""^["']?tag["']?[ \t]*:[ \t]*\n((?:[ \t]*-[ \t]*\S.*\n?)+)""", re.M)
_TAG_INLINE = re.compile(r"""^["']?tag["']?[ \t]*:[ \t]*\[(.*)\]""", re.M)


def _quick_scan() -> dict[str, dict]:
    """name -> {"kind", "yaml"} (tasks, groups) or {"kind": "TAG"} from a text scan of
    lm-eval's task files (~2 s instead of ~20 s for lm-eval's own index).

    Incomplete on purpose (a tag set only in an included template is missed); a miss
    falls through to the full index, never to 'unknown'.
    """
    found: dict[str, dict] = {}
    for p in sorted(_builtin_root().rglob("*yaml")):  # includes "_default_template_yaml" files
        try:
            text = p.read_text(errors="ignore")
        except (OSError, IsADirectoryError):
            continue
        tags = []
        for m in _NAME_LINE.finditer(text):
            key, name = m.group(1), m.group(2)
            if key == "tag":
                tags.append(name)
            elif name not in found and p.suffix == ".yaml":
                found[name] = {"kind": key.upper(), "yaml": p}
        for m in _TAG_BLOCK.finditer(text):
            tags += [x.strip()[1:].strip().strip("\"'") for x in m.group(1).splitlines() if x.strip()]
        for m in _TAG_INLINE.finditer(text):
            tags += [x.strip().strip("\"'") for x in m.group(1).split(",") if x.strip()]
        for t in tags:
            found.setdefault(t, {"kind": "TAG"})
    return found


def _entry_info(entry) -> dict:
    cfg = entry.cfg or {}
    info = {"kind": entry.kind.name, "yaml": str(entry.yaml_path) if entry.yaml_path else None}
    if entry.kind.name == "TASK":
        info["dataset_path"] = cfg.get("dataset_path")
        info["custom_dataset"] = bool(cfg.get("custom_dataset"))
        info["remote_files"] = _remote_files((cfg.get("dataset_kwargs") or {}).get("data_files"))
    elif entry.kind.name == "GROUP":
        info["subtasks"] = _group_members(cfg)
    elif entry.kind.name == "TAG":
        info["subtasks"] = sorted(entry.tags)
    return info


def _remote_files(data_files) -> list[str]:
    """data_files entries that live on the Hub or the web (hf://..., https://...)."""
    if isinstance(data_files, dict):
        vals = list(data_files.values())
    else:
        vals = data_files if isinstance(data_files, list) else [data_files]
    flat = []
    for v in vals:
        flat += v if isinstance(v, list) else [v]
    return [str(v) for v in flat if isinstance(v, str) and re.match(r"^(hf|https?)://", v)]


def _group_members(cfg: dict) -> list[str]:
    items = cfg.get("task") or []
    items = items if isinstance(items, list) else [items]
    out = []
    for it in items:
        if isinstance(it, str):
            out.append(it)
        elif isinstance(it, dict) and isinstance(it.get("task") or it.get("group"), str):
            out.append(it.get("task") or it.get("group"))
    return out


def _full_index() -> dict[str, dict]:
    """lm-eval's complete built-in index, reduced to what the checks need; cached on disk."""
    import lm_eval

    version = getattr(lm_eval, "__version__", "unknown")
    path = cache_root() / f"lm_eval_index-{version}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass
    log("indexing lm-eval's built-in tasks (one-time, about 20 s; cached in "
        f"{path.parent})")
    tm = _task_manager(None, include_defaults=True)
    index = {name: _entry_info(e) for name, e in tm.task_index.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(index))
    os.replace(tmp, path)
    return index


def _info_from_yaml(name: str, yaml_path: Path) -> dict | None:
    from lm_eval.tasks._index import TaskIndex
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        cfg = load_yaml(yaml_path, resolve_func=False, recursive=True)
    except Exception:  # noqa: BLE001 - an odd YAML: let the full index decide
        return None
    if cfg.get("task") == name or cfg.get("group") == name:
        entry = TaskIndex.entry_from_config(cfg)
        if entry is not None:
            entry.yaml_path = yaml_path
            return _entry_info(entry)
    return None  # a tag, or a name defined elsewhere: the full index knows


def _hub_datasets(info: dict) -> list[str]:
    """Hub dataset repos (or URLs) a task's data comes from; [] for local data."""
    if info.get("kind") != "TASK" or info.get("custom_dataset"):
        return []
    remote = []
    for url in info.get("remote_files") or []:
        m = re.match(r"^hf://datasets/([^/]+/[^/@]+)", url)
        remote.append(m.group(1) if m else url)
    dp = info.get("dataset_path")
    if not dp or dp in LOCAL_BUILDERS or Path(str(dp)).expanduser().exists():
        return sorted(set(remote))
    return sorted(set(remote + [str(dp)]))


def _dataset_cached(repo_id: str) -> bool:
    """Is this Hub dataset in the local `datasets` or hub cache (so offline loading can work)?"""
    try:
        import datasets.config as dc
        from huggingface_hub import constants as hc
    except ImportError:
        return False
    flat = repo_id.replace("/", "___")
    candidates = [Path(dc.HF_DATASETS_CACHE) / flat,
                  Path(hc.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}"]
    return any(c.is_dir() and any(c.iterdir()) for c in candidates)


def check_tasks(tasks: list[str], include_path=TASKS_DIR) -> dict:
    """Validate task names and data reachability before any model or dataset loads.

    Returns {"local_only": bool, "hub_datasets": [...]}. Raises UserError for an
    unknown name (with did-you-mean) or for Hub data that cannot be had offline.
    """
    if not tasks:
        raise UserError("No lm-eval task given.")
    local_tm = _task_manager(include_path, include_defaults=False)
    local = set(local_tm.all_tasks)
    others = [t for t in tasks if t not in local]
    if not others:
        return {"local_only": True, "hub_datasets": []}

    quick = _quick_scan()
    full: dict[str, dict] | None = None
    infos: dict[str, dict] = {}

    def info_of(name: str) -> dict | None:
        nonlocal full
        if name in infos:
            return infos[name]
        q = quick.get(name)
        got = None
        # Tags often come from included templates, so a text scan cannot list their
        # members: tags always go to the full index.
        if q and q["kind"] != "TAG":
            got = _info_from_yaml(name, q["yaml"])
        if got is None:
            full = full if full is not None else _full_index()
            got = full.get(name)
        infos[name] = got
        return got

    for t in others:
        if info_of(t) is None:
            names = sorted(local | set(full or {}) | set(quick))
            raise UserError(
                f"Unknown lm-eval task '{t}'.{did_you_mean(t, names)} qwenft ships "
                f"{', '.join(sorted(local))} (in {include_path}); `lm_eval ls tasks` lists lm-eval's "
                f"own.")

    hub: list[tuple[str, str]] = []
    seen: set[str] = set()
    stack = list(others)
    while stack:
        name = stack.pop()
        if name in seen or name in local:
            continue
        seen.add(name)
        info = info_of(name)
        if info is None:
            continue  # a subtask lm-eval itself will report
        stack.extend(info.get("subtasks") or [])
        hub += [(name, d) for d in _hub_datasets(info)]
    need = sorted({d for _, d in hub})
    if need and not hub_reachable():
        missing = [d for d in need if not _dataset_cached(d)]
        if missing:
            by_task = sorted({t for t, d in hub if d in missing})
            shown = ", ".join(by_task[:8]) + (f" and {len(by_task) - 8} more" if len(by_task) > 8 else "")
            raise UserError(
                f"lm-eval task(s) {shown} load their data from the Hugging Face Hub "
                f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}), and the Hub is "
                f"unreachable here (offline detected in under 3 s) with no cached copy. Run them "
                f"where the Hub is reachable (or pre-download the datasets into the HF cache), or "
                f"use the shipped offline tasks: {', '.join(sorted(local))}.")
        _force_datasets_offline()
    return {"local_only": False, "hub_datasets": need}


def _force_datasets_offline() -> None:
    # Cached Hub datasets load offline only if `datasets` does not first try the network.
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import datasets.config as dc

        dc.HF_HUB_OFFLINE = True
    except ImportError:
        pass


# --------------------------------------------------------------------------- running


def _policy_lm_class():
    from lm_eval.models.huggingface import HFLM

    class QwenftHFLM(HFLM):
        """HFLM whose chat prompts get qwenft's system policy, exactly as `qwenft eval`."""

        def __init__(self, *args, system_policy: str = "default", **kwargs):
            super().__init__(*args, **kwargs)
            self.system_policy = system_policy

        def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
            msgs = apply_system_policy(list(chat_history), self.system_policy)
            return super().apply_chat_template(msgs, add_generation_prompt=add_generation_prompt)

    return QwenftHFLM


def _metric_summary(results: dict) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} without stderr entries and filter suffixes (",none")."""
    out: dict[str, dict[str, float]] = {}
    for task, vals in (results.get("results") or {}).items():
        row = {}
        for k, v in vals.items():
            if k in ("alias", "sample_len") or "_stderr" in k or not isinstance(v, (int, float)):
                continue
            metric, _, flt = k.partition(",")
            row[metric if flt in ("", "none") else f"{metric}[{flt}]"] = float(v)
        out[task] = row
    return out


def _newest(folder: Path, pattern: str) -> Path | None:
    files = sorted(folder.rglob(pattern), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def run_lm_eval(model, tokenizer, tasks: list[str], *, include_path=TASKS_DIR, batch_size: int = 8,
                max_length: int = 2048, limit: int | None = None, system_policy: str = "default",
                apply_chat_template: bool = True, log_samples: bool = True,
                out_dir: Path | None = None, model_name: str = "model",
                max_gen_toks: int | None = None, checked: bool = False) -> dict:
    """Evaluate an already-loaded model on lm-eval tasks; save lm-eval's JSON into out_dir.

    Returns {"tasks", "metrics": {task: {metric: value}}, "seconds", "files": {...},
    "n_samples": {task: n}, "raw": lm-eval's results dict without samples}.
    max_gen_toks overrides the tasks' token budget (qwenft eval passes its own, so
    both sides of a comparison generate under the same budget).
    """
    import torch
    from lm_eval import evaluator
    from lm_eval.loggers import EvaluationTracker

    if not checked:
        check_tasks(tasks, include_path)
    tm = _task_manager(include_path, include_defaults=not check_tasks_local_only(tasks, include_path))
    device = "cuda" if torch.cuda.is_available() and next(model.parameters()).is_cuda else "cpu"
    lm = _policy_lm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                            max_length=max_length, device=device, system_policy=system_policy)
    tracker = EvaluationTracker(output_path=str(out_dir)) if out_dir is not None else None
    t0 = time.time()
    results = evaluator.simple_evaluate(
        model=lm, model_args={"pretrained": model_name}, tasks=list(tasks), task_manager=tm,
        batch_size=batch_size, device=device, limit=limit, log_samples=log_samples,
        apply_chat_template=apply_chat_template, system_instruction=None,
        evaluation_tracker=tracker,
        gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
        # Means get closed-form stderrs whatever this is; 1000 bootstrap draws (not lm-eval's
        # 100000) keep tasks with bootstrapped metrics (bleu, f1) to seconds on a CPU.
        bootstrap_iters=1000)
    seconds = time.time() - t0
    results["config"]["qwenft_system_policy"] = system_policy
    samples = results.pop("samples", None) if log_samples else None
    files: dict = {}
    if tracker is not None:
        if system_policy not in ("default", "none"):
            # Record the policy text as lm-eval records a system instruction.
            from lm_eval.utils import hash_string

            tracker.general_config_tracker.system_instruction = system_policy
            tracker.general_config_tracker.system_instruction_sha = hash_string(system_policy)
        tracker.save_results_aggregated(results=results, samples=samples)
        if samples:
            for task_name in results["configs"]:
                if task_name in samples:
                    tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
        folder = Path(out_dir)
        res_file = _newest(folder, "results_*.json")
        if res_file is None:
            raise RuntimeError(f"lm-eval did not write its results under {folder}")
        files = {"results": str(res_file),
                 "samples": {t: str(p) for t in results["configs"]
                             if (p := _newest(res_file.parent, f"samples_{t}_*.jsonl"))}}
    return {"tasks": list(tasks), "metrics": _metric_summary(results), "seconds": round(seconds, 2),
            "files": files, "n_samples": dict(results.get("n-samples") or {}),
            "raw": json.loads(json.dumps(results, default=str))}


def check_tasks_local_only(tasks: list[str], include_path=TASKS_DIR) -> bool:
    local = set(_task_manager(include_path, include_defaults=False).all_tasks)
    return all(t in local for t in tasks)
