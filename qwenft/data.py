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

from .config import DataConfig, DataSource, looks_like_file
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


class _BadLine(str):
    """A line that could not be read as a record (kept apart from records that are strings)."""


TABULAR = (".parquet", ".csv")


def _read_records(path: Path) -> tuple[list[tuple[int, object]], str, list[str] | None]:
    """Return [(row_number, record or _BadLine)], the file fingerprint, and the columns of a
    CSV/Parquet file (None for JSON)."""
    if not path.exists():
        raise UserError(f"Data file {path} does not exist. Fix data.sources[].path (paths are "
                        f"relative to the recipe file).")
    if path.is_dir():
        raise UserError(f"Data path {path} is a directory, not a file. Point data.sources[].path at "
                        f"a .jsonl/.json/.parquet/.csv file inside it.")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json") + TABULAR:
        raise UserError(f"Data file {path} has an unsupported extension '{suffix or '(none)'}'. Use "
                        f".jsonl, .json, .parquet or .csv (or set path to a Hub dataset id).")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"Cannot read data file {path}: {e.strerror or e}. Check its permissions.") from None
    fp = hashlib.sha256(raw).hexdigest()
    if not raw.strip():
        raise UserError(f"Data file {path} is empty (0 rows). Add rows or remove the source.")
    if suffix == ".jsonl":
        out = []
        lines = raw.split(b"\n")
        if lines[0].startswith(b"\xef\xbb\xbf"):
            lines[0] = lines[0][3:]  # UTF-8 byte-order mark
        for i, bline in enumerate(lines, start=1):
            if not bline.strip():
                continue
            try:
                line = bline.decode("utf-8")
            except UnicodeDecodeError as e:
                out.append((i, _BadLine(f"not UTF-8 text (byte 0x{bline[e.start]:02x} at column "
                                        f"{e.start + 1}; latin-1/cp1252?); re-save the file as UTF-8")))
                continue
            try:
                out.append((i, json.loads(line)))
            except ValueError as e:
                out.append((i, _BadLine(f"not valid JSON ({e.msg} at column {e.colno}); fix or remove "
                                        f"the line (JSONL holds one JSON object per line)")))
        return out, fp, None
    if suffix == ".json":
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}; latin-1/cp1252?). "
                            f"Re-save the file as UTF-8.") from None
        try:
            data = json.loads(text)
        except ValueError as e:
            raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}). Fix the "
                            f"file, or use JSONL (one object per line).") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            what = (f"an object with keys {', '.join(map(str, list(data)[:8]))}" if isinstance(data, dict)
                    else f"a {type(data).__name__}")
            raise UserError(f"{path}: a .json data file must hold a list of rows (objects), got "
                            f"{what}. Wrap the rows in [ ... ] or use JSONL (one object per line).")
        return list(enumerate(data, start=1)), fp, None
    import pandas as pd

    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            try:
                raw.decode("utf-8-sig")
            except UnicodeDecodeError as e:
                line = raw[: e.start].count(b"\n") + 1
                raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}; "
                                f"latin-1/cp1252?). Re-save the file as UTF-8.") from None
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except UserError:
        raise
    except Exception as e:  # pandas/pyarrow raise many types for a broken file
        msg = " ".join(str(e).split())[:300]
        raise UserError(f"{path}: cannot read as {suffix[1:]} ({type(e).__name__}: {msg}). Check "
                        f"the file is a valid {suffix[1:]} file.") from None
    records = []
    for i, rec in enumerate(df.to_dict(orient="records"), start=1):
        rec = {str(k): _plain(v) for k, v in rec.items()}
        # CSV row i is on line i+1 (header first, assuming no multi-line cells); Parquet rows
        # are 1-based indices.
        records.append((i + 1 if suffix == ".csv" else i, rec))
    return records, fp, [str(c) for c in df.columns]


def _plain(v):
    """Parquet/pandas values to plain Python: numpy arrays to lists (nested), NaN to None."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        return _plain(v.tolist())
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _maybe_json(v):
    """CSV/Parquet store nested conversations and tool lists as JSON strings."""
    v = _plain(v)
    if isinstance(v, str) and v.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def _maybe_messages(v):
    """A prompt/completion value: text, or a message list (possibly as a JSON string).

    A string is decoded only when it decodes to a list of {role, ...} objects, so a
    completion that is itself JSON text (`{"name": ...}`) stays text."""
    if isinstance(v, str) and v.lstrip()[:1] == "[":
        try:
            d = json.loads(v)
        except ValueError:
            return v
        if isinstance(d, list) and d and all(isinstance(m, dict) and "role" in m for m in d):
            return d
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
    tools = _maybe_json(record.get("tools"))
    if tools == "":
        tools = None  # an empty CSV cell
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise ValueError("'tools' must be a list of tool (function) specs, each an object like "
                         "{\"type\": \"function\", \"function\": {\"name\": ..., \"parameters\": ...}}")
    if fmt == "messages":
        key = column or "messages"
        msgs = _maybe_json(record.get(key))
        if msgs is None:
            raise ValueError(f"missing field '{key}' (the row has: {', '.join(map(str, record)) or 'no keys'})")
        if not isinstance(msgs, list):
            raise ValueError(f"'{key}' must be a list of {{role, content}} objects, got {type(msgs).__name__}")
        return [dict(m) if isinstance(m, dict) else m for m in msgs], tools or None
    if fmt == "sharegpt":
        key = column or "conversations"
        conv = _maybe_json(record.get(key))
        if not isinstance(conv, list):
            raise ValueError(f"missing or non-list field '{key}' (a list of {{from, value}} objects)")
        msgs = []
        if isinstance(record.get("system"), str) and record["system"].strip():
            msgs.append({"role": "system", "content": record["system"]})
        for j, turn in enumerate(conv):
            if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
                raise ValueError(f"conversations[{j}] must have 'from' and 'value'")
            who = turn["from"]
            role = SHAREGPT_ROLES.get(who) if isinstance(who, str) else None
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
        return msgs, tools or None
    if fmt == "alpaca":
        ins, out = record.get("instruction"), record.get("output")
        if not isinstance(ins, str) or not isinstance(out, str):
            raise ValueError("alpaca rows need string 'instruction' and 'output'")
        inp = record.get("input") or ""
        user = ins if not str(inp).strip() else f"{ins}\n\n{inp}"
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": out}]
        if isinstance(record.get("system"), str) and record["system"].strip():
            msgs.insert(0, {"role": "system", "content": record["system"]})
        return msgs, tools or None
    if fmt == "prompt_completion":
        p, c = _maybe_messages(record.get("prompt")), _maybe_messages(record.get("completion"))
        if p is None or c is None:
            raise ValueError("prompt_completion rows need 'prompt' and 'completion'")
        pm = [{"role": "user", "content": p}] if isinstance(p, str) else p
        cm = [{"role": "assistant", "content": c}] if isinstance(c, str) else c
        if not isinstance(pm, list) or not isinstance(cm, list):
            raise ValueError("'prompt'/'completion' must be strings or lists of messages")
        return [dict(m) if isinstance(m, dict) else m for m in list(pm) + list(cm)], tools or None
    raise ValueError(f"unknown format '{fmt}'")


# Control tokens of the Qwen chat format. Inside message text the tokenizer turns them into the
# real special tokens, which silently breaks the turn structure the model learns.
CONTROL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


def _check_tool_calls(j: int, calls) -> str | None:
    if not isinstance(calls, list):
        return f"message {j} tool_calls must be a list of {{type, function: {{name, arguments}}}} objects"
    for k, tc in enumerate(calls):
        fn = tc.get("function", tc) if isinstance(tc, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
            return (f"message {j} tool_calls[{k}] needs a function name: "
                    f"{{\"type\": \"function\", \"function\": {{\"name\": ..., \"arguments\": {{...}}}}}}")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError as e:
                return (f"message {j} tool_calls[{k}] ({fn['name']}) arguments are not valid JSON "
                        f"({e.msg}); give an object or a JSON string of one")
        if not isinstance(args, dict):
            return (f"message {j} tool_calls[{k}] ({fn['name']}) arguments must be an object, got "
                    f"{type(args).__name__}")
    return None


def validate_messages(msgs: list) -> str | None:
    """Return the problem with a conversation, or None when it can be trained on."""
    if not isinstance(msgs, list):
        return f"the conversation must be a list of messages, got {type(msgs).__name__}"
    if not msgs:
        return "the conversation is empty"
    has_answer = False
    prev = None
    for j, m in enumerate(msgs):
        if not isinstance(m, dict):
            return f"message {j} is not an object (got {type(m).__name__}); use {{\"role\": ..., \"content\": ...}}"
        role = m.get("role")
        if role not in ROLES:
            return (f"message {j} has unknown role {role!r}.{did_you_mean(role, ROLES)} "
                    f"Allowed: {', '.join(ROLES)}")
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            hint = "; join the text parts into one string" if isinstance(content, list) else ""
            return f"message {j} ({role}) content must be a string, got {type(content).__name__}{hint}"
        found = [tok for tok in CONTROL_TOKENS if content and tok in content]
        if found:
            return (f"message {j} ({role}) contains the control token(s) {', '.join(found)}, which the "
                    f"tokenizer turns into real turn markers; remove them from the text")
        if role == "system" and j != 0:
            return f"message {j} is a system message after the start; move it first"
        if role == "assistant":
            if prev not in ("user", "tool"):
                return (f"message {j} is an assistant turn after {prev or 'nothing'}; an assistant "
                        f"turn must answer a user or tool message")
            calls = m.get("tool_calls")
            if calls is not None:
                problem = _check_tool_calls(j, calls)
                if problem:
                    return problem
            if not (content or "").strip() and not calls:
                return f"message {j} is an empty assistant turn; give it content or remove the row"
            has_answer = True
        elif role == "user" and prev == "user":
            return f"message {j} is a second user turn in a row; merge them or add the assistant answer"
        elif role == "tool":
            if prev not in ("assistant", "tool") or (prev == "assistant" and not msgs[j - 1].get("tool_calls")):
                return (f"message {j} is a tool result without a preceding assistant tool call; put "
                        f"an assistant message with tool_calls before it")
        if role in ("user", "system", "tool") and content is None:
            return f"message {j} ({role}) has no content; give it a \"content\" string"
        prev = role
    if not has_answer:
        return "the conversation has no assistant turn to learn from"
    if prev != "assistant":
        return f"the conversation ends with a {prev} turn that no assistant answers; remove it or add the answer"
    return None


def load_source(spec: DataSource, max_length: int) -> LoadedSource:
    path = Path(spec.path).expanduser()
    local = path.exists() or looks_like_file(spec.path)
    records, fp, columns = _read_records(path) if local else (*_read_hub(spec), None)
    if not records:
        raise UserError(f"Data source {spec.path} holds no rows. Add rows or remove the source.")
    fmt = spec.format
    if fmt == "auto":
        for _, rec in records:
            fmt = detect_format(rec)
            if fmt:
                break
        if fmt in (None, "auto"):
            first = next((r for _, r in records if isinstance(r, dict)), None)
            seen = (f"the {'columns are' if columns else 'first row has keys'}: "
                    f"{', '.join(map(str, columns or list(first)))}" if columns or first
                    else "no row is a JSON object")
            raise UserError(f"{spec.path}: cannot detect the row format ({seen}). A row needs "
                            f"'messages', 'conversations', 'instruction'+'output' or "
                            f"'prompt'+'completion'; rename the fields/columns, or set the source's "
                            f"format: messages|sharegpt|alpaca|prompt_completion (and column:).")
    if columns is not None:
        need = (spec.column,) if spec.column and fmt in ("messages", "sharegpt") else FORMAT_KEYS[fmt]
        missing = [k for k in need if k not in columns]
        if missing:
            raise UserError(f"{spec.path}: format {fmt} needs the column(s) {', '.join(missing)}, but the "
                            f"file's columns are {', '.join(columns)}. Rename the columns, or set the "
                            f"source's format/column to match.")
    rows, bad = [], []
    huge = max_length * HUGE_ROW_CHARS_PER_TOKEN
    for line, rec in records:
        if isinstance(rec, _BadLine):
            bad.append(BadRow(spec.path, line, str(rec)))
            continue
        try:
            msgs, tools = _convert(rec, fmt, spec.column)
        except ValueError as e:
            bad.append(BadRow(spec.path, line, f"{e} (format {fmt})"))
            continue
        except Exception as e:  # a record shaped too oddly for the converter: still a named bad row
            bad.append(BadRow(spec.path, line, f"cannot read the row as format {fmt} "
                                               f"({type(e).__name__}: {e})"))
            continue
        problem = validate_messages(msgs)
        if problem is None:
            size = sum(len(m.get("content") or "") for m in msgs) + len(json.dumps(tools or []))
            if size > huge:
                problem = (f"the row has {size} characters, far more than max_length={max_length} "
                           f"tokens can hold; shorten or split it, or raise data.max_length")
        if problem:
            bad.append(BadRow(spec.path, line, problem))
            continue
        rows.append(Row(msgs, tools, spec.path, line))
    return LoadedSource(spec, rows, bad, fp, len(records), fmt)


def _weighted(rows: list[Row], weight: float, rng: random.Random) -> list[Row]:
    """round(weight * len(rows)) rows (half up): every row floor(weight) times, plus a seeded sample."""
    whole = int(math.floor(weight))
    out = rows * whole
    k = min(len(rows), max(0, int(math.floor(weight * len(rows) + 0.5)) - whole * len(rows)))
    if k:
        out += rng.sample(rows, k)
    return out


def _source_rng(seed: int, s: LoadedSource, what: str, index: int) -> random.Random:
    """A per-source generator: a file's split and sample depend only on the seed, its content and
    its place in the list, never on where the file lives (the same recipe in two clones trains
    on the same rows in the same order)."""
    return random.Random(f"{seed}:{what}:{s.fingerprint}:{index}")


def load_data(cfg: DataConfig, seed: int) -> DataReport:
    """Load, validate, mix and split all sources; raise one UserError listing every bad row."""
    if not cfg.sources:
        raise UserError("The recipe has no data.sources. Add at least one: data: {sources: [{path: train.jsonl}]}.")
    loaded = [load_source(s, cfg.max_length) for s in cfg.sources]
    vloaded = [load_source(s, cfg.max_length) for s in cfg.validation_sources]
    bad = [b for s in loaded + vloaded for b in s.bad]
    if bad and cfg.on_bad_row == "error":
        shown = "; ".join(str(b) for b in bad[:20])
        more = (f" ... and {len(bad) - 20} more (data.on_bad_row: skip reports every one)"
                if len(bad) > 20 else "")
        raise UserError(f"{len(bad)} bad data row(s): {shown}{more}. Fix these rows, or set "
                        f"data.on_bad_row: skip to train without them (each is reported).")
    train, val = [], []
    for index, s in enumerate(loaded):
        rows = list(s.rows)
        if not rows:
            raise UserError(f"Data source {s.spec.path} has no usable rows (all {len(s.bad)} are bad, "
                            f"see the skipped rows). Fix the rows or remove the source.")
        if not cfg.validation_sources and cfg.validation_fraction > 0:
            # Split per source before weighting so repeated rows never leak into validation.
            n_val = max(1, int(round(cfg.validation_fraction * len(rows))))
            if n_val >= len(rows):
                raise UserError(f"data.validation_fraction={cfg.validation_fraction} leaves no training "
                                f"rows from {s.spec.path} ({len(rows)} usable rows); lower it, or give "
                                f"data.validation_sources instead.")
            held = set(_source_rng(seed, s, "split", index).sample(range(len(rows)), n_val))
            val += [r for i, r in enumerate(rows) if i in held]
            rows = [r for i, r in enumerate(rows) if i not in held]
        rng = _source_rng(seed, s, "mix", index)
        if cfg.shuffle:
            rng.shuffle(rows)
        train += _weighted(rows, s.spec.weight, rng)
    for s in vloaded:
        val += s.rows
    if cfg.shuffle:
        random.Random(seed).shuffle(train)
    if not train:
        raise UserError("After weighting, no training rows are left (every data.sources[].weight "
                        "rounds to 0 rows). Raise a weight.")
    return DataReport(train, val, loaded + vloaded, skipped=bad)
