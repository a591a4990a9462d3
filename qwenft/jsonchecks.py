"""Metrics on model outputs for structured (JSON) tasks.

Every function here takes arbitrary model text and must never raise: models
emit truncated JSON, prose, fences, control characters and endless strings, and
one bad sample must not kill an eval run.

Format checking: jsonschema's Draft202012Validator.FORMAT_CHECKER checks
"date" (datetime.date.fromisoformat) and "email" (contains "@") without extra
packages; "date-time" would need rfc3339-validator, which is not a dependency,
so it is NOT checked (jsonschema treats unchecked formats as annotations). The
shipped suites only use "date" and "email".
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match

FORMAT_CHECKER = Draft202012Validator.FORMAT_CHECKER

# Bounds on the prose scan so a pathological 100k-character output costs
# milliseconds, not minutes (each raw_decode attempt can read to the end).
MAX_SCAN_STARTS = 1000
MAX_ERROR_CHARS = 160

_DECODER = json.JSONDecoder()


def _reject_constant(name: str):
    # NaN / Infinity are Python extensions, not JSON.
    raise ValueError(f"{name} is not valid JSON")


_STRICT_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _as_text(text: Any) -> str:
    if isinstance(text, str):
        return text
    if isinstance(text, (bytes, bytearray)):
        return bytes(text).decode("utf-8", errors="replace")
    return "" if text is None else str(text)


def _decode_whole(s: str) -> tuple[bool, Any]:
    try:
        value, end = _STRICT_DECODER.raw_decode(s)
    except (ValueError, RecursionError):
        return False, None
    return (end == len(s)), (value if end == len(s) else None)


def parse_strict(text: str) -> tuple[bool, Any]:
    """The whole answer (surrounding whitespace stripped) is exactly one JSON value."""
    s = _as_text(text).strip()
    if not s:
        return False, None
    return _decode_whole(s)


def _fenced_blocks(s: str):
    """Bodies of ``` fences (an optional language tag such as `json` is skipped)."""
    pos = 0
    while True:
        start = s.find("```", pos)
        if start == -1:
            return
        end = s.find("```", start + 3)
        if end == -1:
            return
        body = s[start + 3:end]
        first_line, newline, rest = body.partition("\n")
        if newline and first_line.strip().isalpha():
            body = rest  # drop the tag line ("json", "JSON", ...)
        elif body[:4].lower() == "json":
            body = body[4:]  # tag without a newline: ```json {...}```
        yield body
        pos = end + 3


def _first_embedded(s: str) -> tuple[bool, Any]:
    """The first object/array that decodes starting at some '{' or '['."""
    starts = 0
    for i, ch in enumerate(s):
        if ch not in "{[":
            continue
        starts += 1
        if starts > MAX_SCAN_STARTS:
            break
        try:
            value, _end = _STRICT_DECODER.raw_decode(s, i)
        except (ValueError, RecursionError):
            continue
        return True, value
    return False, None


def parse_lenient(text: str) -> tuple[bool, Any]:
    """Strict; else the first ``` fenced block that is JSON; else the first JSON object/array in prose."""
    s = _as_text(text)
    ok, value = parse_strict(s)
    if ok:
        return ok, value
    for body in _fenced_blocks(s):
        ok, value = parse_strict(body)
        if ok:
            return ok, value
    return _first_embedded(s)


def _normalise(value: Any) -> Any:
    # 20 and 20.0 are the same JSON number; True and 1 are not (Python says they are).
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def canonical(value: Any) -> str:
    """Canonical JSON text: sorted keys, no spaces, integral floats as ints."""
    try:
        return json.dumps(_normalise(value), sort_keys=True, ensure_ascii=False,
                          separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return repr(value)


def flatten(value: Any, prefix: str = "") -> set[tuple[str, str]]:
    """(path, canonical leaf) pairs: dict keys as `a.b`, list items as `a[0]`; empty containers are leaves."""
    pairs: set[tuple[str, str]] = set()
    stack = [(prefix, value)]
    while stack:  # iterative so deeply nested outputs cannot hit the recursion limit
        path, node = stack.pop()
        if isinstance(node, dict) and node:
            for k, v in node.items():
                stack.append((f"{path}.{k}" if path else str(k), v))
        elif isinstance(node, list) and node:
            for i, v in enumerate(node):
                stack.append((f"{path}[{i}]", v))
        else:
            pairs.add((path, canonical(node)))
    return pairs


@functools.lru_cache(maxsize=256)
def _validator_for(schema_text: str) -> Draft202012Validator:
    schema = json.loads(schema_text)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FORMAT_CHECKER)


def _short(msg: str) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= MAX_ERROR_CHARS else msg[:MAX_ERROR_CHARS - 3] + "..."


def schema_check(value: Any, schema: Any) -> tuple[bool, str | None]:
    """(valid, reason) for value against a draft 2020-12 schema with format checks; never raises."""
    try:
        validator = _validator_for(json.dumps(schema, sort_keys=True))
    except SchemaError as e:
        return False, _short(f"broken schema: {e.message}")
    except Exception as e:  # unserialisable or otherwise unusable schema
        return False, _short(f"broken schema: {type(e).__name__}: {e}")
    try:
        error = best_match(validator.iter_errors(value))
    except Exception as e:  # e.g. an unresolvable $ref or an invalid regex in `pattern`
        return False, _short(f"schema could not be applied: {type(e).__name__}: {e}")
    if error is None:
        return True, None
    where = error.json_path if error.path else "$"
    return False, _short(f"schema: {where}: {error.message}")


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def score_sample(text: str, *, schema: dict | None, gold: Any = None, has_gold: bool = False,
                 stopped: bool, n_tokens: int) -> dict:
    """Per-sample metrics; see the module docstring. Never raises."""
    s = _as_text(text)
    valid_strict, _ = parse_strict(s)
    valid_lenient, value = parse_lenient(s)
    error = None if valid_lenient else "no JSON value found"

    schema_valid = None
    if schema is not None:
        schema_valid = False
        if valid_lenient:
            schema_valid, reason = schema_check(value, schema)
            error = error or reason

    out = {"valid_strict": valid_strict, "valid_lenient": valid_lenient,
           "schema_valid": schema_valid, "exact_match": None,
           "field_tp": None, "field_fp": None, "field_fn": None,
           "precision": None, "recall": None, "f1": None}
    if has_gold:
        gold_pairs = flatten(gold)
        pred_pairs = flatten(value) if valid_lenient else set()
        tp = len(gold_pairs & pred_pairs)
        fp = len(pred_pairs - gold_pairs)
        fn = len(gold_pairs - pred_pairs)
        precision, recall, f1 = _prf(tp, fp, fn)
        out.update(exact_match=valid_lenient and canonical(value) == canonical(gold),
                   field_tp=tp, field_fp=fp, field_fn=fn,
                   precision=precision, recall=recall, f1=f1)
    out.update(clean_stop=bool(stopped) and valid_strict, n_tokens=int(n_tokens or 0),
               error=error)
    return out


def _rate(flags: list) -> float | None:
    known = [bool(f) for f in flags if f is not None]
    return sum(known) / len(known) if known else None


def aggregate(samples: list[dict], *, seconds: float | None = None) -> dict:
    """Run-level metrics. Field P/R/F1 are micro-averaged over rows with gold."""
    n = len(samples)
    gold_rows = [s for s in samples if s.get("exact_match") is not None]
    total_tokens = sum(s.get("n_tokens") or 0 for s in samples)
    result = {
        "n": n,
        "valid_strict_rate": _rate([s.get("valid_strict") for s in samples]),
        "valid_lenient_rate": _rate([s.get("valid_lenient") for s in samples]),
        # Rows scored without a schema (schema_valid None) do not count either way.
        "schema_valid_rate": _rate([s.get("schema_valid") for s in samples]),
        "exact_match_rate": _rate([s["exact_match"] for s in gold_rows]),
        "field_precision": None, "field_recall": None, "field_f1": None,
        "clean_stop_rate": _rate([s.get("clean_stop") for s in samples]),
        "mean_output_tokens": total_tokens / n if n else None,
        "tokens_per_second": total_tokens / seconds if seconds and seconds > 0 else None,
    }
    if gold_rows:
        tp = sum(s["field_tp"] for s in gold_rows)
        fp = sum(s["field_fp"] for s in gold_rows)
        fn = sum(s["field_fn"] for s in gold_rows)
        p, r, f = _prf(tp, fp, fn)
        result.update(field_precision=p, field_recall=r, field_f1=f)
    return result


def aggregate_by_slice(samples: list[dict], slices: list[str],
                       seconds: float | None = None) -> dict[str, dict]:
    """{"all": aggregate(samples), <slice>: aggregate(rows of that slice), ...}.

    Throughput (tokens_per_second) is only reported for "all": the run is timed
    as a whole, so per-slice seconds are unknown. A slice literally named "all"
    is already the "all" entry and is not repeated.
    """
    if len(slices) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(slices)} slice labels")
    out = {"all": aggregate(samples, seconds=seconds)}
    for name in dict.fromkeys(slices):  # first-appearance order, deduplicated
        if name == "all":
            continue
        out[name] = aggregate([s for s, sl in zip(samples, slices) if sl == name])
    return out
