"""Training data: load, detect the format, validate every row, mix by weight, split, tokenize.

Every row is checked before any model loads. A problem names the file and the
1-based row (line for JSONL). `on_bad_row: error` stops with the list;
`skip` drops those rows and reports each one. No row is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from .config import DataConfig, DataSource
from .errors import UserError, did_you_mean

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant",
    "assistant": "assistant", "tool": "tool", "observation": "tool", "function_call": "assistant",
}
FORMAT_KEYS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
}
# A row whose text is this many times max_length characters is surely a mistake
# (a whole file pasted into one field); tokenizing it would be slow for nothing.
HUGE_ROW_CHARS_PER_TOKEN = 64


@dataclass
class Row:
    """A validated conversation and where it came from."""

    messages: list[dict]
    tools: list | None
    source: str
    line: int


@dataclass
class BadRow:
    source: str
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.problem}"


@dataclass
class LoadedSource:
    spec: DataSource
    rows: list[Row]
    bad: list[BadRow]
    fingerprint: str
    n_raw: int
    format: str


@dataclass
class DataReport:
    train: list[Row]
    validation: list[Row]
    sources: list[LoadedSource]
    skipped: list[BadRow] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "train_rows": len(self.train),
            "validation_rows": len(self.validation),
            "skipped_rows": len(self.skipped),
            "skipped": [str(b) for b in self.skipped],
            "sources": [{"path": s.spec.path, "format": s.format, "rows": s.n_raw,
                         "valid": len(s.rows), "bad": len(s.bad), "weight": s.spec.weight,
                         "fingerprint": s.fingerprint} for s in self.sources],
        }


# --------------------------------------------------------------------------- reading files


def _read_records(path: Path) -> tuple[list[tuple[int, object]], str]:
    """Return [(row_number, record_or_BadRow-string)], and the file fingerprint."""
    if not path.exists():
        raise UserError(f"Data file {path} does not exist. Fix data.sources[].path (paths are "
                        f"relative to the recipe file).")
    if path.is_dir():
        raise UserError(f"Data path {path} is a directory, not a file. Point data.sources[].path at "
                        f"a .jsonl/.json/.parquet/.csv file inside it.")
    raw = path.read_bytes()
    fp = hashlib.sha256(raw).hexdigest()
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise UserError(f"{path}:{line}: not UTF-8 ({e.reason} at byte {e.start}). Re-save the "
                            f"file as UTF-8.") from None
    if suffix == ".jsonl":
        out = []
        for i, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                out.append((i, json.loads(line)))
            except ValueError as e:
                out.append((i, f"not valid JSON ({e.msg} at column {e.colno}); fix or remove the line"))
        return out, fp
    if suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}). Fix the "
                            f"file, or use JSONL (one object per line).") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise UserError(f"{path}: a .json data file must hold a list of rows (objects); got "
                            f"{type(data).__name__}. Wrap the rows in [ ... ] or use JSONL.")
        return list(enumerate(data, start=1)), fp
    if suffix in (".parquet", ".csv"):
        import pandas as pd

        try:
            df = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path, dtype=str, keep_default_na=False)
        except Exception as e:  # pandas/pyarrow raise many types for a broken file
            raise UserError(f"{path}: cannot read as {suffix[1:]} ({type(e).__name__}: {e}). Check "
                            f"the file is a valid {suffix[1:]} file.") from None
        records = []
        for i, rec in enumerate(df.to_dict(orient="records"), start=1):
            rec = {k: _maybe_json(v) for k, v in rec.items()}
            # CSV row i is on line i+1 (header first); Parquet rows are 1-based indices.
            records.append((i + 1 if suffix == ".csv" else i, rec))
        return records, fp
    raise UserError(f"Data file {path} has an unsupported extension '{suffix}'. Use .jsonl, .json, "
                    f".parquet or .csv.")


def _maybe_json(v):
    """CSV/Parquet store nested conversations as JSON strings; numpy arrays as lists."""
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def _read_hub(spec: DataSource) -> tuple[list[tuple[int, object]], str]:
    from .base import hub_reachable

    if not hub_reachable():
        raise UserError(f"Data source '{spec.path}' is not a local file and the Hugging Face Hub is "
                        f"unreachable (offline). Use a local .jsonl/.json/.parquet/.csv file, or "
                        f"connect to the Hub.")
    import datasets

    try:
        ds = datasets.load_dataset(spec.path, spec.subset, split=spec.split)
    except Exception as e:
        raise UserError(f"Cannot load Hub dataset '{spec.path}' (subset {spec.subset}, split "
                        f"{spec.split}): {type(e).__name__}: {e}") from None
    return list(enumerate(ds, start=1)), f"hub:{spec.path}:{ds._fingerprint}"


# --------------------------------------------------------------------------- formats


def detect_format(record) -> str | None:
    if not isinstance(record, dict):
        return None
    for fmt, keys in FORMAT_KEYS.items():
        if all(k in record for k in keys):
            return fmt
    return None


def _convert(record, fmt: str, column: str | None) -> tuple[list[dict], list | None]:
    """Normalise one record to OpenAI-style messages. Raises ValueError(problem; fix)."""
    if not isinstance(record, dict):
        raise ValueError(f"row is a {type(record).__name__}, expected a JSON object")
    tools = record.get("tools")
    if isinstance(tools, str):
        tools = _maybe_json(tools)
    if fmt == "messages":
        msgs = record.get(column or "messages")
        if msgs is None:
            raise ValueError(f"missing field '{column or 'messages'}'")
        if not isinstance(msgs, list):
            raise ValueError("'messages' must be a list of {role, content} objects")
        return [dict(m) if isinstance(m, dict) else m for m in msgs], tools
    if fmt == "sharegpt":
        conv = record.get(column or "conversations")
        if not isinstance(conv, list):
            raise ValueError(f"missing or non-list field '{column or 'conversations'}'")
        msgs = []
        if isinstance(record.get("system"), str) and record["system"].strip():
            msgs.append({"role": "system", "content": record["system"]})
        for j, turn in enumerate(conv):
            if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
                raise ValueError(f"conversations[{j}] must have 'from' and 'value'")
            who = turn["from"]
            role = SHAREGPT_ROLES.get(who)
            if role is None:
                raise ValueError(f"conversations[{j}] has unknown role '{who}'.{did_you_mean(who, SHAREGPT_ROLES)}"
                                 f" Allowed: {', '.join(SHAREGPT_ROLES)}")
            if who == "function_call":
                try:
                    call = json.loads(turn["value"]) if isinstance(turn["value"], str) else turn["value"]
                    calls = call if isinstance(call, list) else [call]
                    msgs.append({"role": "assistant", "content": "", "tool_calls": [
                        {"type": "function", "function": {"name": c["name"], "arguments": c.get("arguments", {})}}
                        for c in calls]})
                except (ValueError, KeyError, TypeError):
                    raise ValueError(f"conversations[{j}] function_call value must be JSON "
                                     f"{{\"name\": ..., \"arguments\": ...}}") from None
            else:
                msgs.append({"role": role, "content": turn["value"]})
        return msgs, tools
    if fmt == "alpaca":
        ins, out = record.get("instruction"), record.get("output")
        if not isinstance(ins, str) or not isinstance(out, str):
            raise ValueError("alpaca rows need string 'instruction' and 'output'")
        inp = record.get("input") or ""
        user = ins if not str(inp).strip() else f"{ins}\n\n{inp}"
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": out}]
        if isinstance(record.get("system"), str) and record["system"].strip():
            msgs.insert(0, {"role": "system", "content": record["system"]})
        return msgs, tools
    if fmt == "prompt_completion":
        p, c = record.get("prompt"), record.get("completion")
        if p is None or c is None:
            raise ValueError("prompt_completion rows need 'prompt' and 'completion'")
        pm = [{"role": "user", "content": p}] if isinstance(p, str) else p
        cm = [{"role": "assistant", "content": c}] if isinstance(c, str) else c
        if not isinstance(pm, list) or not isinstance(cm, list):
            raise ValueError("'prompt'/'completion' must be strings or lists of messages")
        return list(pm) + list(cm), tools
    raise ValueError(f"unknown format '{fmt}'")


def validate_messages(msgs: list) -> str | None:
    """Return the problem with a conversation, or None when it can be trained on."""
    if not msgs:
        return "the conversation is empty"
    has_answer = False
    prev = None
    for j, m in enumerate(msgs):
        if not isinstance(m, dict):
            return f"message {j} is not an object"
        role = m.get("role")
        if role not in ROLES:
            return (f"message {j} has unknown role {role!r}.{did_you_mean(role, ROLES)} "
                    f"Allowed: {', '.join(ROLES)}")
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            return f"message {j} ({role}) content must be a string, got {type(content).__name__}"
        if role == "system" and j != 0:
            return f"message {j} is a system message after the start; move it first"
        if role == "assistant":
            if prev not in ("user", "tool"):
                return (f"message {j} is an assistant turn after {prev or 'nothing'}; an assistant "
                        f"turn must answer a user or tool message")
            calls = m.get("tool_calls")
            if calls is not None and not isinstance(calls, list):
                return f"message {j} tool_calls must be a list"
            if not (content or "").strip() and not calls:
                return f"message {j} is an empty assistant turn; give it content or remove the row"
            has_answer = True
        elif role == "user" and prev == "user":
            return f"message {j} is a second user turn in a row; merge them or add the assistant answer"
        elif role == "tool":
            if prev not in ("assistant", "tool") or (prev == "assistant" and not msgs[j - 1].get("tool_calls")):
                return f"message {j} is a tool result without a preceding assistant tool call"
        if role in ("user", "system") and content is None:
            return f"message {j} ({role}) has no content"
        prev = role
    if not has_answer:
        return "the conversation has no assistant turn to learn from"
    if prev != "assistant":
        return f"the conversation ends with a {prev} turn that no assistant answers; remove it or add the answer"
    return None


def load_source(spec: DataSource, max_length: int) -> LoadedSource:
    path = Path(spec.path)
    local = path.exists() or path.suffix.lower() in (".jsonl", ".json", ".parquet", ".csv")
    records, fp = _read_records(path) if local else _read_hub(spec)
    if not records:
        raise UserError(f"Data source {spec.path} holds no rows. Add rows or remove the source.")
    fmt = spec.format
    if fmt == "auto":
        for _, rec in records:
            fmt = detect_format(rec)
            if fmt:
                break
        if fmt in (None, "auto"):
            raise UserError(f"{spec.path}: cannot detect the row format (no row has 'messages', "
                            f"'conversations', 'instruction'+'output' or 'prompt'+'completion'). Set "
                            f"format: messages|sharegpt|alpaca|prompt_completion.")
    rows, bad = [], []
    huge = max_length * HUGE_ROW_CHARS_PER_TOKEN
    for line, rec in records:
        if isinstance(rec, str):
            bad.append(BadRow(spec.path, line, rec))
            continue
        try:
            msgs, tools = _convert(rec, fmt, spec.column)
        except ValueError as e:
            bad.append(BadRow(spec.path, line, f"{e} (format {fmt})"))
            continue
        problem = validate_messages(msgs)
        if problem is None:
            size = sum(len(m.get("content") or "") for m in msgs)
            if size > huge:
                problem = (f"the row has {size} characters, far more than max_length={max_length} "
                           f"tokens can hold; shorten or split it, or raise data.max_length")
        if problem:
            bad.append(BadRow(spec.path, line, problem))
            continue
        rows.append(Row(msgs, tools if isinstance(tools, list) else None, spec.path, line))
    return LoadedSource(spec, rows, bad, fp, len(records), fmt)


def _weighted(rows: list[Row], weight: float, rng: random.Random) -> list[Row]:
    whole = int(math.floor(weight))
    frac = weight - whole
    out = rows * whole
    k = int(round(frac * len(rows)))
    if k:
        out += rng.sample(rows, k)
    return out


def load_data(cfg: DataConfig, seed: int) -> DataReport:
    """Load, validate, mix and split all sources; raise one UserError listing every bad row."""
    if not cfg.sources:
        raise UserError("The recipe has no data.sources. Add at least one: data: {sources: [{path: train.jsonl}]}.")
    loaded = [load_source(s, cfg.max_length) for s in cfg.sources]
    vloaded = [load_source(s, cfg.max_length) for s in cfg.validation_sources]
    bad = [b for s in loaded + vloaded for b in s.bad]
    if bad and cfg.on_bad_row == "error":
        shown = "; ".join(str(b) for b in bad[:20])
        more = f" ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise UserError(f"{len(bad)} bad data row(s): {shown}{more}. Fix these rows, or set "
                        f"data.on_bad_row: skip to train without them (each is reported).")
    rng = random.Random(seed)
    train, val = [], []
    for s in loaded:
        rows = list(s.rows)
        if not rows:
            raise UserError(f"Data source {s.spec.path} has no usable rows ({len(s.bad)} bad). Fix the rows.")
        if cfg.shuffle:
            rng.shuffle(rows)
        if not cfg.validation_sources and cfg.validation_fraction > 0:
            # Split per source before weighting so repeated rows never leak into validation.
            n_val = max(1, int(round(cfg.validation_fraction * len(rows))))
            if n_val >= len(rows):
                raise UserError(f"data.validation_fraction={cfg.validation_fraction} leaves no training "
                                f"rows from {s.spec.path} ({len(rows)} rows); lower it.")
            val += rows[:n_val]
            rows = rows[n_val:]
        train += _weighted(rows, s.spec.weight, rng)
    for s in vloaded:
        val += s.rows
    if cfg.shuffle:
        rng.shuffle(train)
    if not train:
        raise UserError("After weighting, no training rows are left (all weights are 0?). Raise a weight.")
    return DataReport(train, val, loaded + vloaded, skipped=bad)
