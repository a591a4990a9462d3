"""Eval suites: JSONL files of prompts with a JSON Schema (and optionally a gold answer).

Row format (one JSON object per line; blank lines are ignored):
  id       string, optional; default "<file stem>-<line number>"
  messages OpenAI-style [{"role": "system"|"user"|"assistant", "content": str}, ...],
           last one from the user                     } exactly one of
  prompt   string, shorthand for one user message     } messages / prompt
  schema   JSON Schema object (draft 2020-12), required
  gold     expected JSON value, optional (null is a valid gold)
  slice    string, optional; default "all"

`load_suite` checks every row before returning anything and reports all
problems in one UserError, so a user fixes a file in one pass instead of one
error per run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from .errors import UserError, did_you_mean

SHIPPED_SUITES = ("json_extraction", "schema_following")
SUITES_DIR = Path("eval") / "suites"
ALLOWED_KEYS = ("id", "messages", "prompt", "schema", "gold", "slice")
ROLES = ("system", "user", "assistant")
MAX_SHOWN = 20


@dataclass
class SuiteRow:
    id: str
    messages: list[dict]
    schema: dict
    gold: Any
    has_gold: bool
    slice: str
    source: str
    line: int


class _RowProblem(Exception):
    """One problem with one row: what is wrong, and how to fix it."""

    def __init__(self, problem: str, fix: str):
        super().__init__(problem)
        self.problem, self.fix = problem, fix


def _short(text: Any, limit: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _suggest(word: str, choices) -> str:
    """"Did you mean 'x'? " (with a trailing space) or ""."""
    hint = did_you_mean(word, choices).strip()
    return f"{hint} " if hint else ""


def _check_keys(obj: dict) -> None:
    unknown = [k for k in obj if k not in ALLOWED_KEYS]
    if unknown:
        names = ", ".join(f"'{_short(k, 40)}'" for k in unknown[:5])
        raise _RowProblem(f"unknown key{'s' if len(unknown) > 1 else ''} {names}",
                          f"fix: {_suggest(unknown[0], ALLOWED_KEYS)}Use only "
                          f"{', '.join(ALLOWED_KEYS)}")


def _check_schema(obj: dict) -> dict:
    if "schema" not in obj:
        raise _RowProblem("missing 'schema'",
                          "fix: add \"schema\": a JSON Schema object the answer must satisfy")
    schema = obj["schema"]
    if not isinstance(schema, dict):
        raise _RowProblem(f"'schema' is a {type(schema).__name__}, not an object",
                          "fix: give a JSON Schema object such as {\"type\": \"object\"}")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.path) or "top level"
        raise _RowProblem(f"invalid JSON Schema at {where}: {_short(e.message)}",
                          "fix: make it a valid draft 2020-12 schema") from None
    return schema


def _check_messages(obj: dict) -> list[dict]:
    has_messages, has_prompt = "messages" in obj, "prompt" in obj
    if has_messages == has_prompt:
        which = "both 'messages' and 'prompt'" if has_messages else "neither 'messages' nor 'prompt'"
        raise _RowProblem(f"has {which}",
                          "fix: give exactly one: \"prompt\": \"...\" or \"messages\": [...]")
    if has_prompt:
        prompt = obj["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise _RowProblem("'prompt' is not a non-empty string",
                              "fix: make \"prompt\" the user's message text")
        return [{"role": "user", "content": prompt}]
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise _RowProblem("'messages' is not a non-empty list",
                          "fix: give [{\"role\": \"user\", \"content\": \"...\"}]")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise _RowProblem(f"messages[{i}] is not an object with a string 'content'",
                              "fix: write each message as {\"role\": ..., \"content\": \"...\"}")
        if m.get("role") not in ROLES:
            role = _short(m.get("role"), 30)
            raise _RowProblem(f"messages[{i}] has role '{role}'",
                              f"fix: {_suggest(role, ROLES)}Use one of {', '.join(ROLES)}")
    if messages[-1]["role"] != "user":
        raise _RowProblem(f"the last message is from '{messages[-1]['role']}', not the user",
                          "fix: end with the user's message; the model writes the reply")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _check_str(obj: dict, key: str, default: str) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise _RowProblem(f"'{key}' is not a non-empty string",
                          f"fix: make \"{key}\" a string or leave it out")
    return value


def _check_gold(obj: dict, schema: dict) -> None:
    # A gold answer that fails its own schema is a suite bug and would make every
    # model look wrong on that row.
    if "gold" not in obj:
        return
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    error = next(iter(validator.iter_errors(obj["gold"])), None)
    if error is not None:
        raise _RowProblem(f"'gold' does not satisfy the row's schema ({_short(error.message)})",
                          "fix: correct the gold answer or the schema")


def _parse_row(text: str, source: str, line: int, stem: str) -> SuiteRow:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise _RowProblem(f"not valid JSON ({e.msg} at column {e.colno})",
                          "fix: write exactly one JSON object per line") from None
    except RecursionError:
        raise _RowProblem("not valid JSON (nested too deeply)",
                          "fix: write exactly one JSON object per line") from None
    if not isinstance(obj, dict):
        raise _RowProblem(f"is a JSON {type(obj).__name__}, not an object",
                          "fix: write each row as {\"prompt\": ..., \"schema\": {...}}")
    _check_keys(obj)
    schema = _check_schema(obj)
    messages = _check_messages(obj)
    row_id = _check_str(obj, "id", f"{stem}-{line}")
    slice_name = _check_str(obj, "slice", "all")
    _check_gold(obj, schema)
    return SuiteRow(id=row_id, messages=messages, schema=schema, gold=obj.get("gold"),
                    has_gold="gold" in obj, slice=slice_name, source=source, line=line)


def _read_text(path: Path) -> str:
    shown = str(path)
    if not path.exists():
        raise UserError(f"Suite file {shown} not found. Fix: check the path, or use a shipped "
                        f"suite by name ({', '.join(SHIPPED_SUITES)}).")
    if path.is_dir():
        raise UserError(f"Suite path {shown} is a directory, not a file. Fix: point at one "
                        ".jsonl file inside it.")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{shown}:{line}: not UTF-8 (byte 0x{data[e.start]:02x}); fix: save "
                        "the file as UTF-8.") from None


def load_suite(path) -> list[SuiteRow]:
    """Load and validate a suite; one UserError lists every problem (path:line: problem; fix)."""
    path = Path(path)
    shown = str(path)
    text = _read_text(path)
    rows: list[SuiteRow] = []
    problems: list[str] = []
    first_line_of: dict[str, int] = {}
    # split("\n"), not splitlines(): JSON strings may hold raw U+2028 and friends.
    for line_no, raw in enumerate(text.split("\n"), start=1):
        raw = raw.rstrip("\r")
        if not raw.strip():
            continue
        try:
            row = _parse_row(raw.lstrip("\ufeff"), shown, line_no, path.stem)
        except _RowProblem as p:
            problems.append(f"{shown}:{line_no}: {p.problem}; {p.fix}")
            continue
        if row.id in first_line_of:
            problems.append(f"{shown}:{line_no}: duplicate id '{_short(row.id, 60)}' (first on "
                            f"line {first_line_of[row.id]}); fix: give every row a unique id")
            continue
        first_line_of[row.id] = line_no
        rows.append(row)
    if not rows and not problems:
        raise UserError(f"Suite file {shown} is empty. Fix: add one JSON object per line with "
                        "a \"prompt\" (or \"messages\") and a \"schema\".")
    if problems:
        raise UserError(_summary(shown, problems))
    return rows


def _summary(shown: str, problems: list[str]) -> str:
    head = f"Suite file {shown} has {len(problems)} problem{'s' if len(problems) != 1 else ''}:"
    listed = " ".join(p if p.endswith(".") else p + "." for p in problems[:MAX_SHOWN])
    more = len(problems) - MAX_SHOWN
    tail = f" ...and {more} more." if more > 0 else ""
    return f"{head} {listed}{tail}"


def shipped_suites(repo_root: Path | None = None) -> list[str]:
    """Short names usable with resolve_suite: the built-in ones plus any eval/suites/*.jsonl."""
    names = list(SHIPPED_SUITES)
    if repo_root is not None:
        folder = Path(repo_root) / SUITES_DIR
        if folder.is_dir():
            names += sorted(p.stem for p in folder.glob("*.jsonl") if p.stem not in names)
    return names


def _default_repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def resolve_suite(name_or_path, repo_root: Path | None = None) -> Path:
    """A path to a suite file: an existing path as given, else a shipped suite's short name."""
    repo_root = Path(repo_root) if repo_root is not None else _default_repo_root()
    raw = str(name_or_path)
    path = Path(raw).expanduser()
    if path.exists():
        return path
    names = shipped_suites(repo_root)
    looks_like_path = "/" in raw or "\\" in raw or path.suffix != ""
    if raw in names and not looks_like_path:
        return repo_root / SUITES_DIR / f"{raw}.jsonl"
    if looks_like_path:
        raise UserError(f"Suite file {raw} not found. Fix: check the path, or use a shipped "
                        f"suite by name ({', '.join(names)}).")
    raise UserError(f"Unknown suite '{raw}'.{did_you_mean(raw, names)} Fix: pass a .jsonl path "
                    f"or one of the shipped suites: {', '.join(names)}.")
