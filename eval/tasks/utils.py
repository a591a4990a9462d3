"""Helpers for qwenft's shipped lm-eval tasks (referenced from the YAMLs as `!function utils.X`).

Data: each task's `custom_dataset` builds its rows here from a path relative to THIS
file, so the tasks work from any working directory (lm-eval resolves
`dataset_kwargs.data_files` from the current directory instead). The JSON suites
are read with qwenft's own validating loader, the same rows `qwenft eval` uses;
nested fields (schema, gold, messages) travel as JSON text because Arrow would
merge the rows' different schemas into one struct and pad them with nulls.

Scoring: `process_results_json` calls qwenft.jsonchecks.score_sample, the scorer of
`qwenft eval`, so the same greedy output gives the same valid/schema/exact/F1
numbers. What lm-eval cannot give: clean_stop (lm-eval decodes with
skip_special_tokens and strips stop sequences, so whether <|im_end|> came before
the budget is not visible) and token counts; those are reported by `qwenft eval` only.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ARITH_FILE = HERE / "qwenft_arith.jsonl"
ARITH_SEED = 20240601
ARITH_ROWS = 60


def _qwenft():
    try:
        import qwenft  # noqa: F401
    except ImportError:  # running lm-eval from a checkout without `pip install -e .`
        sys.path.insert(0, str(REPO))


# --------------------------------------------------------------------------- JSON suites


def suite_docs(suite: str) -> list[dict]:
    """The suite's rows as flat lm-eval docs (single-turn rows; an optional system message)."""
    _qwenft()
    from qwenft.suites import load_suite, resolve_suite

    docs = []
    for row in load_suite(resolve_suite(suite, REPO)):
        system = [m["content"] for m in row.messages if m["role"] == "system"]
        turns = [m for m in row.messages if m["role"] != "system"]
        if len(turns) != 1 or len(system) > 1:
            raise ValueError(f"{row.source}:{row.line}: lm-eval tasks take single-turn rows (one "
                             f"user message, optionally one system message); run multi-turn "
                             f"suites with `qwenft eval`.")
        docs.append({"id": row.id, "slice": row.slice, "system": system[0] if system else "",
                     "user": turns[0]["content"], "schema_json": json.dumps(row.schema),
                     "gold_json": json.dumps(row.gold) if row.has_gold else "",
                     "has_gold": row.has_gold})
    return docs


def load_suite_dataset(suite: str = "json_extraction", **_ignored):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(suite_docs(suite))})


def doc_to_text(doc: dict) -> str:
    return doc["user"]


def doc_to_target(doc: dict) -> str:
    return doc["gold_json"]


def process_results_json(doc: dict, results: list[str]) -> dict:
    _qwenft()
    from qwenft.jsonchecks import score_sample

    gold = json.loads(doc["gold_json"]) if doc["has_gold"] else None
    # stopped is unknowable here (see the module docstring); clean_stop is not reported.
    s = score_sample(results[0], schema=json.loads(doc["schema_json"]), gold=gold,
                     has_gold=doc["has_gold"], stopped=True, n_tokens=0)
    out = {"valid_strict": float(s["valid_strict"]), "valid_lenient": float(s["valid_lenient"]),
           "schema_valid": float(bool(s["schema_valid"]))}
    if doc["has_gold"]:
        counts = (s["field_tp"], s["field_fp"], s["field_fn"])
        out.update(exact_match=float(bool(s["exact_match"])), field_f1=counts,
                   field_precision=counts, field_recall=counts)
    return out


def _micro(items) -> tuple[float, float, float]:
    tp = sum(i[0] for i in items)
    fp = sum(i[1] for i in items)
    fn = sum(i[2] for i in items)
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def micro_f1(items) -> float:
    """Field F1 micro-averaged over rows (summed tp/fp/fn), as jsonchecks.aggregate does."""
    return _micro(items)[2]


def micro_precision(items) -> float:
    return _micro(items)[0]


def micro_recall(items) -> float:
    return _micro(items)[1]


# --------------------------------------------------------------------------- arithmetic


def make_arith_rows(seed: int = ARITH_SEED, n: int = ARITH_ROWS) -> list[dict]:
    """Deterministic small-integer arithmetic questions: a 'did fine-tuning break it' probe."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        op = ("+", "-", "*")[i % 3]
        if op == "*":
            a, b = rnd.randint(2, 12), rnd.randint(2, 12)
        else:
            a, b = rnd.randint(10, 99), rnd.randint(10, 99)
        answer = a + b if op == "+" else a - b if op == "-" else a * b
        rows.append({"id": f"arith-{i + 1:03d}", "question": f"What is {a} {op} {b}? "
                     f"Reply with the number only.", "answer": str(answer)})
    return rows


def write_arith_file(path: Path = ARITH_FILE) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in make_arith_rows()))


def load_arith_dataset(**_ignored):
    import datasets

    rows = [json.loads(line) for line in ARITH_FILE.read_text().splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


_NUMBER = re.compile(r"-?\d[\d,]*")


def process_results_arith(doc: dict, results: list[str]) -> dict:
    text = results[0].strip()
    m = _NUMBER.search(text)
    got = m.group(0).replace(",", "") if m else None
    return {"exact_match": float(got == doc["answer"]),
            "exact_match_strict": float(text == doc["answer"])}


if __name__ == "__main__":  # regenerate the arithmetic data file
    write_arith_file()
    print(f"wrote {ARITH_FILE}")
