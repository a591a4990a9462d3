"""Suite loading: every malformed row is reported with file, line and fix."""

import json

import pytest

from qwenft.errors import UserError
from qwenft.suites import SuiteRow, load_suite, resolve_suite

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
GOOD = {"prompt": "Give a.", "schema": SCHEMA}


def _line(obj) -> str:
    return obj if isinstance(obj, str) else json.dumps(obj)


def _write(tmp_path, rows, name="mysuite.jsonl"):
    path = tmp_path / name
    path.write_text("".join(_line(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _error(path) -> str:
    with pytest.raises(UserError) as info:
        load_suite(path)
    message = str(info.value)
    assert "\n" not in message  # one paragraph
    return message


BAD_ROWS = {
    "not json": ('{"prompt": "x", "schema": {}', "not valid JSON", "one JSON object per line"),
    "not an object": ('["prompt", "schema"]', "not an object", "fix: write each row as"),
    "unknown key": ({**GOOD, "shema": {}}, "unknown key 'shema'", "Use only id, messages, prompt"),
    "missing schema": ({"prompt": "x"}, "missing 'schema'", "fix: add \"schema\""),
    "schema not object": ({"prompt": "x", "schema": "int"}, "not an object",
                          "fix: give a JSON Schema object"),
    "invalid schema": ({"prompt": "x", "schema": {"type": "integr"}}, "invalid JSON Schema",
                       "fix: make it a valid draft 2020-12 schema"),
    "both": ({**GOOD, "messages": [{"role": "user", "content": "x"}]},
             "both 'messages' and 'prompt'", "fix: give exactly one"),
    "neither": ({"schema": SCHEMA}, "neither 'messages' nor 'prompt'", "fix: give exactly one"),
    "empty prompt": ({"prompt": " ", "schema": SCHEMA}, "'prompt' is not a non-empty string",
                     "fix: make \"prompt\""),
    "bad role": ({"messages": [{"role": "usr", "content": "x"}], "schema": SCHEMA},
                 "role 'usr'", "Use one of system, user, assistant"),
    "no content": ({"messages": [{"role": "user"}], "schema": SCHEMA},
                   "string 'content'", "fix: write each message"),
    "last not user": ({"messages": [{"role": "user", "content": "x"},
                                    {"role": "assistant", "content": "y"}], "schema": SCHEMA},
                      "last message is from 'assistant'", "fix: end with the user's message"),
    "bad slice": ({**GOOD, "slice": 3}, "'slice' is not a non-empty string", "fix: make"),
    "gold fails schema": ({**GOOD, "gold": {"a": "one"}}, "'gold' does not satisfy",
                          "fix: correct the gold answer"),
}


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_malformed_row_reports_file_line_and_fix(tmp_path, kind):
    bad, problem, fix = BAD_ROWS[kind]
    path = _write(tmp_path, [GOOD, {**GOOD, "id": "second"}, bad])
    message = _error(path)
    assert f"{path}:3: " in message
    assert "mysuite.jsonl" in message
    assert problem in message and fix in message
    assert "has 1 problem:" in message


def test_unknown_key_suggests_the_right_one(tmp_path):
    message = _error(_write(tmp_path, [{**GOOD, "shema": {}, "slise": "x"}]))
    assert "unknown keys 'shema', 'slise'; fix: Did you mean 'schema'? Use only" in message


def test_bad_role_suggests_the_right_one(tmp_path):
    row = {"messages": [{"role": "usr", "content": "x"}], "schema": SCHEMA}
    assert "role 'usr'; fix: Did you mean 'user'? Use one of" in _error(_write(tmp_path, [row]))


def test_duplicate_ids(tmp_path):
    path = _write(tmp_path, [{**GOOD, "id": "a"}, {**GOOD, "id": "b"}, {**GOOD, "id": "a"}])
    message = _error(path)
    assert f"{path}:3: duplicate id 'a' (first on line 1)" in message
    assert "fix: give every row a unique id" in message


def test_default_id_collision_is_a_duplicate(tmp_path):
    path = _write(tmp_path, [{**GOOD, "id": "mysuite-2"}, GOOD])
    assert f"{path}:2: duplicate id 'mysuite-2'" in _error(path)


def test_all_problems_in_one_error(tmp_path):
    path = _write(tmp_path, [GOOD, "nope", {"prompt": "x"}, GOOD, {"schema": SCHEMA}])
    message = _error(path)
    assert "has 3 problems:" in message
    for line in (2, 3, 5):
        assert f"{path}:{line}: " in message


def test_many_problems_are_capped(tmp_path):
    path = _write(tmp_path, ["nope"] * 25)
    message = _error(path)
    assert "has 25 problems:" in message
    assert f"{path}:20: " in message and f"{path}:21: " not in message
    assert "...and 5 more." in message


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n", encoding="utf-8")
    message = _error(path)
    assert str(path) in message and "is empty" in message and "Fix: add one JSON object" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.jsonl"
    message = _error(path)
    assert str(path) in message and "not found" in message and "Fix: check the path" in message


def test_directory(tmp_path):
    message = _error(tmp_path)
    assert str(tmp_path) in message and "is a directory" in message and "Fix: point at" in message


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"prompt": "café"}'.encode("latin-1"))
    message = _error(path)
    assert f"{path}:2: not UTF-8" in message and "fix: save the file as UTF-8" in message


def test_good_rows_load_with_defaults(tmp_path):
    rows = [GOOD,
            "",
            {"id": "m", "slice": "held", "gold": {"a": 1}, "schema": SCHEMA,
             "messages": [{"role": "system", "content": "Be terse."},
                          {"role": "user", "content": "Give a. \u2028 (line separator)"}]}]
    path = _write(tmp_path, rows)
    first, second = load_suite(path)
    assert first == SuiteRow(id="mysuite-1", messages=[{"role": "user", "content": "Give a."}],
                             schema=SCHEMA, gold=None, has_gold=False, slice="all",
                             source=str(path), line=1)
    assert (second.id, second.slice, second.line, second.has_gold) == ("m", "held", 3, True)
    assert [m["role"] for m in second.messages] == ["system", "user"]


def test_shipped_suites_load(repo_root):
    rows = load_suite(resolve_suite("json_extraction", repo_root))
    assert len(rows) == 80 and all(r.has_gold for r in rows)
    assert {r.slice for r in rows} == {"in_distribution", "held_out"}
    following = load_suite(resolve_suite("schema_following", repo_root))
    assert len(following) == 30 and not any(r.has_gold for r in following)


def test_resolve_suite(tmp_path, repo_root):
    path = _write(tmp_path, [GOOD])
    assert resolve_suite(path, repo_root) == path
    assert resolve_suite("schema_following", repo_root) == (
        repo_root / "eval" / "suites" / "schema_following.jsonl")
    with pytest.raises(UserError, match="Did you mean 'json_extraction'\\?.*json_extraction, "
                                        "schema_following"):
        resolve_suite("json_extractoin", repo_root)
    with pytest.raises(UserError, match="not found"):
        resolve_suite(tmp_path / "missing.jsonl", repo_root)
