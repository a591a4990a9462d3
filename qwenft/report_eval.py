"""Turn evaluate()'s results dict into comparison.md (base vs tuned, with deltas) and comparison.png."""

from __future__ import annotations

from pathlib import Path

# Shown in this order; rates and F1 are in [0, 1], the last two are costs.
SUITE_METRICS = ["valid_strict_rate", "valid_lenient_rate", "schema_valid_rate", "exact_match_rate",
                 "field_precision", "field_recall", "field_f1", "clean_stop_rate",
                 "mean_output_tokens", "tokens_per_second"]
PLOT_METRICS = ["valid_strict_rate", "schema_valid_rate", "exact_match_rate", "field_f1"]
LOWER_IS_BETTER = {"mean_output_tokens"}


def model_order(results: dict) -> list[str]:
    names = list(results.get("models", {}))
    return (["base", "tuned"] if set(names) >= {"base", "tuned"} else names)


def comparison_rows(results: dict) -> list[dict]:
    """One row per (suite, mode, slice, metric) and per (lm-eval task, metric)."""
    models = model_order(results)
    rows: list[dict] = []
    suites: dict[str, set] = {}
    for m in models:
        for suite, by_mode in (results["models"][m].get("suites") or {}).items():
            for mode, res in by_mode.items():
                suites.setdefault((suite, mode), set()).update(res["metrics"])
    for (suite, mode), slices in suites.items():
        ordered = ["all"] + sorted(s for s in slices if s != "all")
        for sl in ordered:
            for metric in SUITE_METRICS:
                vals = {m: _get(results, m, "suites", suite, mode, "metrics", sl, metric) for m in models}
                if all(v is None for v in vals.values()):
                    continue
                rows.append({"kind": "suite", "name": suite, "mode": mode, "slice": sl,
                             "metric": metric, "values": vals})
    tasks: dict[str, list] = {}
    for m in models:
        for task, mets in ((results["models"][m].get("lm_eval") or {}).get("metrics") or {}).items():
            for metric in mets:
                tasks.setdefault(task, [])
                if metric not in tasks[task]:
                    tasks[task].append(metric)
    for task, metrics in tasks.items():
        for metric in metrics:
            vals = {m: _get(results, m, "lm_eval", "metrics", task, metric) for m in models}
            rows.append({"kind": "lm_eval", "name": task, "mode": "", "slice": "", "metric": metric,
                         "values": vals})
    return rows


def _get(results: dict, model: str, *keys):
    node = results["models"].get(model)
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def _delta(row: dict) -> str:
    base, tuned = row["values"].get("base"), row["values"].get("tuned")
    if base is None or tuned is None:
        return "-"
    d = tuned - base
    better = (d < 0) if row["metric"] in LOWER_IS_BETTER else (d > 0)
    mark = "" if abs(d) < 1e-12 or row["metric"] == "tokens_per_second" else (" ▲" if better else " ▼")
    return f"{d:+.3f}{mark}"


def render_markdown(results: dict) -> str:
    models = model_order(results)
    comparing = models == ["base", "tuned"]
    s = results.get("settings", {})
    lines = ["# qwenft evaluation", ""]
    for m in models:
        lines.append(f"- **{m}**: {results['models'][m]['label']}")
    lines += ["", f"Settings: suites {s.get('suites')}, lm-eval tasks {s.get('lm_eval_tasks')}, modes "
              f"{s.get('modes')}, max_new_tokens {s.get('max_new_tokens')}, batch_size "
              f"{s.get('batch_size')}, limit {s.get('limit')}, system policy "
              f"{s.get('system_policy')!r}, slices {s.get('slices') or 'all'}.", ""]
    rows = comparison_rows(results)
    head = ["metric"] + models + (["Δ (tuned - base)"] if comparing else [])
    suite_rows = [r for r in rows if r["kind"] == "suite"]
    if suite_rows:
        lines += ["## JSON suites", "",
                  "| suite | mode | slice | " + " | ".join(head) + " |",
                  "|" + "---|" * (3 + len(head))]
        for r in suite_rows:
            cells = [r["name"], r["mode"], r["slice"], r["metric"]] + [_fmt(r["values"][m]) for m in models]
            if comparing:
                cells.append(_delta(r))
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", _counts_note(results, models), ""]
    lm_rows = [r for r in rows if r["kind"] == "lm_eval"]
    if lm_rows:
        lines += ["## lm-eval", "", "| task | " + " | ".join(head) + " |", "|" + "---|" * (1 + len(head))]
        for r in lm_rows:
            cells = [r["name"], r["metric"]] + [_fmt(r["values"][m]) for m in models]
            if comparing:
                cells.append(_delta(r))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Rates and F1 are in [0, 1]; field P/R/F1 are micro-averaged over rows with a gold "
              "answer; tokens_per_second is the whole suite's wall time (batched), 'all' only. "
              "Constrained rows wrapped up by the decoder's closing bonus (forced closes) never "
              "count as clean stops.", ""]
    return "\n".join(lines)


def _counts_note(results: dict, models: list[str]) -> str:
    parts = []
    for m in models:
        for suite, by_mode in (results["models"][m].get("suites") or {}).items():
            for mode, res in by_mode.items():
                parts.append(f"{m}/{suite}/{mode}: {res.get('n')} rows, "
                             f"{res.get('hit_budget', 0)} hit the token budget, "
                             f"{res.get('compile_errors', 0)} schema compile errors, "
                             f"{res.get('forced_closes', 0)} forced closes, {res.get('seconds')} s")
    return "Counts: " + "; ".join(parts) + "." if parts else ""


def write_markdown(results: dict, path: Path) -> Path:
    path = Path(path)
    path.write_text(render_markdown(results))
    return path


def write_png(results: dict, path: Path) -> Path:
    """Grouped bars per (suite, mode): x = slice x metric, one bar per model; plus lm-eval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = model_order(results)
    rows = comparison_rows(results)
    panels: dict[str, list[dict]] = {}
    for r in rows:
        if r["kind"] == "suite" and r["metric"] in PLOT_METRICS:
            panels.setdefault(f"{r['name']} [{r['mode']}]", []).append(r)
        elif r["kind"] == "lm_eval" and all(v is None or 0 <= v <= 1 for v in r["values"].values()):
            panels.setdefault("lm-eval", []).append(r)
    if not panels:
        panels["(no metrics)"] = []
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 0.6 * max(len(p) for p in panels.values()) + 3),
                                                      3.2 * len(panels)), squeeze=False)
    width = 0.8 / max(1, len(models))
    colors = {"base": "#8c8c8c", "tuned": "#1f77b4"}
    for ax, (title, prow) in zip(axes[:, 0], panels.items()):
        labels = [f"{r['slice']}\n{r['metric']}" if r["kind"] == "suite" else f"{r['name']}\n{r['metric']}"
                  for r in prow]
        for k, m in enumerate(models):
            xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(prow))]
            ys = [r["values"].get(m) or 0.0 for r in prow]
            ax.bar(xs, ys, width=width, label=m, color=colors.get(m))
        ax.set_xticks(range(len(prow)))
        ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
