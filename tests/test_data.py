"""Data: formats, file types, validation of every row, weights, splits, shuffling, bad rows."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from qwenft.config import DataConfig, DataSource
from qwenft.data import (BadRow, DataReport, Row, detect_format, load_data, load_source,
                         validate_messages)
from qwenft.errors import UserError


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def conv(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def src(path, **kw) -> DataSource:
    return DataSource(path=str(path), **kw)


def cfg(*sources, **kw) -> DataConfig:
    return DataConfig(sources=list(sources), **kw)


def key(r: Row) -> tuple[str, int]:
    return (r.source, r.line)


UA = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


# --------------------------------------------------------------------------- formats


def test_messages_format(tmp_path):
    rows = [conv("q1", "a1"),
            {"messages": [{"role": "system", "content": "S"}] + UA + [{"role": "user", "content": "more"},
                                                                     {"role": "assistant", "content": "sure"}]}]
    s = load_source(src(jsonl(tmp_path / "m.jsonl", rows)), 1024)
    assert s.format == "messages" and s.bad == [] and s.n_raw == 2
    assert s.rows[0].messages == rows[0]["messages"] and s.rows[0].tools is None
    assert s.rows[1].messages == rows[1]["messages"]
    assert [(r.source, r.line) for r in s.rows] == [(str(tmp_path / "m.jsonl"), 1), (str(tmp_path / "m.jsonl"), 2)]


def test_sharegpt_role_mapping(tmp_path):
    tools = [{"name": "get_weather", "description": "w", "parameters": {"type": "object"}}]
    row = {"system": "Be brief.", "tools": json.dumps(tools), "conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": '{"temp": 21}'},
        {"from": "gpt", "value": "21 degrees."},
        {"from": "user", "value": "And Rome?"},
        {"from": "assistant", "value": "Let me check.", "weight": 1},
    ]}
    row2 = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "q"},
                              {"from": "function_call", "value": {"name": "f", "arguments": {}}},
                              {"from": "tool", "value": "r"}, {"from": "gpt", "value": "a"}]}
    s = load_source(src(jsonl(tmp_path / "s.jsonl", [row, row2])), 1024)
    assert s.format == "sharegpt" and s.bad == []
    assert s.rows[0].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "21 degrees."},
        {"role": "user", "content": "And Rome?"},
        {"role": "assistant", "content": "Let me check."},
    ]
    assert s.rows[0].tools == tools  # a JSON-string tools list is decoded
    assert [m["role"] for m in s.rows[1].messages] == ["system", "user", "assistant", "tool", "assistant"]


def test_alpaca_with_and_without_input(tmp_path):
    rows = [{"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
            {"instruction": "Name a colour.", "input": "", "output": "Blue"},
            {"instruction": "Name a fruit.", "output": "Apple", "system": "Answer in one word."}]
    s = load_source(src(jsonl(tmp_path / "a.jsonl", rows)), 1024)
    assert s.format == "alpaca" and s.bad == []
    assert s.rows[0].messages == [{"role": "user", "content": "Translate to French.\n\nGood morning"},
                                  {"role": "assistant", "content": "Bonjour"}]
    assert s.rows[1].messages == [{"role": "user", "content": "Name a colour."},
                                  {"role": "assistant", "content": "Blue"}]
    assert s.rows[2].messages[0] == {"role": "system", "content": "Answer in one word."}


def test_prompt_completion_string_and_list_forms(tmp_path):
    rows = [{"prompt": "2+2?", "completion": "4"},
            {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "2+3?"}],
             "completion": [{"role": "assistant", "content": "5"}]},
            {"prompt": "Give JSON", "completion": '{"a": [1, 2]}'}]
    s = load_source(src(jsonl(tmp_path / "p.jsonl", rows)), 1024)
    assert s.format == "prompt_completion" and s.bad == []
    assert s.rows[0].messages == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert s.rows[1].messages == rows[1]["prompt"] + rows[1]["completion"]
    assert s.rows[2].messages[1]["content"] == '{"a": [1, 2]}'  # JSON text stays text


def test_detect_format():
    assert detect_format({"messages": []}) == "messages"
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"instruction": "", "output": ""}) == "alpaca"
    assert detect_format({"instruction": "", "input": "", "output": ""}) == "alpaca"
    assert detect_format({"prompt": "", "completion": ""}) == "prompt_completion"
    assert detect_format({"prompt": ""}) is None
    assert detect_format({"text": "x"}) is None
    assert detect_format(["messages"]) is None


def test_auto_detection_skips_unreadable_lines_and_explicit_format_and_column(tmp_path):
    p = jsonl(tmp_path / "x.jsonl", ["{broken", {"instruction": "a", "output": "b"}])
    s = load_source(src(p), 1024)
    assert s.format == "alpaca" and len(s.rows) == 1 and s.bad[0].line == 1
    p = jsonl(tmp_path / "c.jsonl", [{"dialogue": UA, "id": 1}])
    s = load_source(src(p, format="messages", column="dialogue"), 1024)
    assert s.rows[0].messages == UA
    m = str(pytest.raises(UserError, load_source, src(p), 1024).value)
    assert "cannot detect" in m and "dialogue, id" in m and "format" in m


def test_json_list_and_data_wrapper(tmp_path):
    (tmp_path / "l.json").write_text(json.dumps([conv("a", "b"), conv("c", "d")]))
    s = load_source(src(tmp_path / "l.json"), 1024)
    assert len(s.rows) == 2 and [r.line for r in s.rows] == [1, 2]
    (tmp_path / "w.json").write_text(json.dumps({"data": [conv("a", "b")]}))
    assert len(load_source(src(tmp_path / "w.json"), 1024).rows) == 1
    (tmp_path / "o.json").write_text(json.dumps({"rows": [conv("a", "b")]}))
    m = str(pytest.raises(UserError, load_source, src(tmp_path / "o.json"), 1024).value)
    assert "o.json" in m and "must hold a list" in m and "keys rows" in m


def test_csv_alpaca_and_messages(tmp_path):
    df = pd.DataFrame({"instruction": ["Give JSON for Ann, 30", "Say hi"], "input": ["", "politely"],
                       "output": ['{"name": "Ann", "age": 30}', "Hello there"]})
    df.to_csv(tmp_path / "a.csv", index=False)
    s = load_source(src(tmp_path / "a.csv"), 1024)
    assert s.format == "alpaca" and s.bad == []
    assert s.rows[0].messages[1]["content"] == '{"name": "Ann", "age": 30}'  # JSON text stays text
    assert s.rows[1].messages[0]["content"] == "Say hi\n\npolitely"
    assert [r.line for r in s.rows] == [2, 3]  # file lines (the header is line 1)
    pd.DataFrame({"messages": [json.dumps(UA), json.dumps(UA[:1])]}).to_csv(tmp_path / "m.csv", index=False)
    s = load_source(src(tmp_path / "m.csv"), 1024)
    assert s.format == "messages" and s.rows[0].messages == UA
    assert [str(b) for b in s.bad] == [f"{tmp_path / 'm.csv'}:3: the conversation has no assistant turn to learn from"]


def test_csv_missing_columns(tmp_path):
    pd.DataFrame({"question": ["q"], "answer": ["a"]}).to_csv(tmp_path / "q.csv", index=False)
    m = str(pytest.raises(UserError, load_source, src(tmp_path / "q.csv", format="alpaca"), 1024).value)
    assert "q.csv" in m and "instruction, output" in m and "question, answer" in m and "Rename" in m


def test_parquet_nested_messages_with_tool_calls(tmp_path):
    call = {"type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    rows = [
        [{"role": "user", "content": "q", "tool_calls": None},
         {"role": "assistant", "content": None, "tool_calls": [call]},
         {"role": "tool", "content": "r", "tool_calls": None},
         {"role": "assistant", "content": "done", "tool_calls": None}],
        [{"role": "user", "content": "q2", "tool_calls": None},
         {"role": "assistant", "content": "a2", "tool_calls": None}],
    ]
    pd.DataFrame({"messages": rows, "id": [1, 2]}).to_parquet(tmp_path / "m.parquet")
    s = load_source(src(tmp_path / "m.parquet"), 1024)
    assert s.format == "messages" and s.bad == [], s.bad
    assert s.rows[0].messages[1]["tool_calls"] == [call]
    assert isinstance(s.rows[0].messages[1]["tool_calls"], list)
    assert s.rows[1].messages[1] == {"role": "assistant", "content": "a2", "tool_calls": None}
    assert [r.line for r in s.rows] == [1, 2]
    pd.DataFrame({"instruction": ["i"], "output": ["o"]}).to_parquet(tmp_path / "a.parquet")
    assert load_source(src(tmp_path / "a.parquet"), 1024).rows[0].messages[1]["content"] == "o"


def test_rows_that_are_not_objects_are_bad_rows_not_crashes(tmp_path):
    p = jsonl(tmp_path / "x.jsonl", [conv("a", "b"), '"just a string"', "[1, 2]", "42", "null"])
    s = load_source(src(p), 1024)
    assert len(s.rows) == 1 and [b.line for b in s.bad] == [2, 3, 4, 5]
    assert all("expected a JSON object" in b.problem for b in s.bad)


def test_latin1_line_is_one_bad_row(tmp_path):
    p = tmp_path / "l.jsonl"
    p.write_bytes(json.dumps(conv("a", "b")).encode() + b"\n" + '{"x": "caf\u00e9"}'.encode("latin-1") + b"\n")
    s = load_source(src(p), 1024)
    assert len(s.rows) == 1 and s.bad[0].line == 2 and "not UTF-8" in s.bad[0].problem


def test_blank_lines_keep_line_numbers(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_text("\n" + json.dumps(conv("a", "b")) + "\n\n" + json.dumps(conv("c", "")) + "\n")
    s = load_source(src(p), 1024)
    assert [r.line for r in s.rows] == [2] and [b.line for b in s.bad] == [4]


# --------------------------------------------------------------------------- row validation


@pytest.mark.parametrize("msgs,problem", [
    ([], "empty"),
    ([{"role": "user", "content": "q"}], "no assistant turn"),
    ([{"role": "bot", "content": "q"}], "unknown role 'bot'"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}], "empty assistant turn"),
    ([{"role": "assistant", "content": "a"}], "assistant turn after nothing"),
    ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}], "assistant turn after system"),
    ([{"role": "user", "content": "q"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
     "second user turn"),
    (UA + [{"role": "user", "content": "q"}], "ends with a user turn"),
    ([{"role": "user", "content": "q"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
     "system message after the start"),
    ([{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}, {"role": "assistant", "content": "a"}],
     "tool result without a preceding assistant tool call"),
    ([{"role": "user", "content": ["q"]}, {"role": "assistant", "content": "a"}], "must be a string"),
    ([{"role": "user"}, {"role": "assistant", "content": "a"}], "has no content"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a<|im_end|>"}], "control token"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": {"name": "f"}}], "must be a list"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"function": {}}]}], "needs a function name"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "arguments": "{bad"}}]}], "not valid JSON"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "arguments": "[1]"}}]}], "must be an object"),
    (["user: q"], "not an object"),
])
def test_validate_messages_problems(msgs, problem):
    got = validate_messages(msgs)
    assert got is not None and problem in got, got


def test_validate_messages_accepts_tool_conversations():
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
                {"name": "g", "arguments": {}}]},
            {"role": "tool", "content": "r1"}, {"role": "tool", "content": "r2"},
            {"role": "assistant", "content": "done"}]
    assert validate_messages(msgs) is None


def test_bad_tools_field_is_a_bad_row(tmp_path):
    p = jsonl(tmp_path / "t.jsonl", [{**conv("a", "b"), "tools": {"name": "f"}}, {**conv("a", "b"), "tools": []}])
    s = load_source(src(p), 1024)
    assert s.bad[0].line == 1 and "'tools' must be a list" in s.bad[0].problem
    assert s.rows[0].tools is None


def test_huge_row_is_reported(tmp_path):
    p = jsonl(tmp_path / "h.jsonl", [conv("x" * 70 * 64, "y"), conv("a", "b")])
    s = load_source(src(p), 64)
    assert [b.line for b in s.bad] == [1] and "raise data.max_length" in s.bad[0].problem
    assert len(load_source(src(p), 128).rows) == 2


# --------------------------------------------------------------------------- bad rows: error / skip


def _mixed(tmp_path) -> Path:
    return jsonl(tmp_path / "mixed.jsonl", [
        conv("q1", "a1"), conv("q2", ""), "{not json", conv("q4", "a4"),
        {"messages": [{"role": "robot", "content": "x"}]}, conv("q6", "a6")])


def test_on_bad_row_error_lists_every_bad_row(tmp_path):
    p = _mixed(tmp_path)
    m = str(pytest.raises(UserError, load_data, cfg(src(p)), 0).value)
    assert m.startswith("3 bad data row(s): ")
    assert f"{p}:2: message 1 is an empty assistant turn" in m
    assert f"{p}:3: not valid JSON" in m
    assert f"{p}:5: message 0 has unknown role 'robot'" in m
    assert f"{p}:1:" not in m and f"{p}:4:" not in m and f"{p}:6:" not in m
    assert "data.on_bad_row: skip" in m


def test_on_bad_row_error_caps_a_long_list_but_says_how_many(tmp_path):
    p = jsonl(tmp_path / "many.jsonl", [conv(f"q{i}", "") for i in range(30)] + [conv("q", "a")])
    m = str(pytest.raises(UserError, load_data, cfg(src(p)), 0).value)
    assert m.startswith("30 bad data row(s)") and f"{p}:20:" in m and f"{p}:21:" not in m
    assert "and 10 more" in m


def test_on_bad_row_skip_reports_each_and_drops_nothing_silently(tmp_path):
    p = _mixed(tmp_path)
    v = jsonl(tmp_path / "val.jsonl", [conv("v1", "a"), conv("v2", "")])
    rep = load_data(cfg(src(p), on_bad_row="skip", validation_sources=[src(v)]), 0)
    assert isinstance(rep, DataReport)
    assert sorted(r.line for r in rep.train) == [1, 4, 6]
    assert [r.line for r in rep.validation] == [1]
    assert [(b.source, b.line) for b in rep.skipped] == [(str(p), 2), (str(p), 3), (str(p), 5), (str(v), 2)]
    assert all(isinstance(b, BadRow) for b in rep.skipped)
    summ = rep.summary()
    assert summ["skipped_rows"] == 4 and summ["skipped"][0].startswith(f"{p}:2: ")
    assert summ["train_rows"] == 3 and summ["validation_rows"] == 1
    for s in summ["sources"]:  # every row of every file is either used or reported
        assert s["valid"] + s["bad"] == s["rows"]
    lines_in_file = sum(1 for ln in p.read_text().splitlines() if ln.strip())
    assert summ["sources"][0]["rows"] == lines_in_file == 6


# --------------------------------------------------------------------------- weights, splits, shuffling


def _rows_file(tmp_path, name, n) -> Path:
    return jsonl(tmp_path / name, [conv(f"{name} q{i}", f"a{i}") for i in range(n)])


def test_weights_subsample_repeat_and_mix(tmp_path):
    a = _rows_file(tmp_path, "a.jsonl", 10)
    b = _rows_file(tmp_path, "b.jsonl", 4)
    half = load_data(cfg(src(a, weight=0.5)), 1).train
    assert len(half) == 5 and len({key(r) for r in half}) == 5
    assert [key(r) for r in load_data(cfg(src(a, weight=0.5)), 1).train] == [key(r) for r in half]
    others = [sorted(r.line for r in load_data(cfg(src(a, weight=0.5)), s).train) for s in range(2, 8)]
    assert any(o != sorted(r.line for r in half) for o in others)  # the sample depends on the seed
    double = load_data(cfg(src(a, weight=2.0)), 1).train
    assert len(double) == 20 and set(Counter(key(r) for r in double).values()) == {2}
    one_half = load_data(cfg(src(a, weight=1.5)), 1).train
    assert len(one_half) == 15 and sorted(Counter(key(r) for r in one_half).values()) == [1] * 5 + [2] * 5
    c5 = _rows_file(tmp_path, "c.jsonl", 5)
    assert len(load_data(cfg(src(c5, weight=1.5)), 1).train) == 8  # round(7.5), half up
    assert len(load_data(cfg(src(c5, weight=0.5)), 1).train) == 3  # round(2.5), half up
    mix = load_data(cfg(src(a, weight=2.0), src(b, weight=0.5)), 3).train
    assert Counter(Path(r.source).name for r in mix) == {"a.jsonl": 20, "b.jsonl": 2}
    zero = load_data(cfg(src(a, weight=1.0), src(b, weight=0.0)), 3).train
    assert Counter(Path(r.source).name for r in zero) == {"a.jsonl": 10}


def test_validation_split_by_fraction(tmp_path):
    a = _rows_file(tmp_path, "a.jsonl", 20)
    b = _rows_file(tmp_path, "b.jsonl", 10)
    c = cfg(src(a, weight=3.0), src(b), validation_fraction=0.2)
    r1, r2 = load_data(c, 5), load_data(c, 5)
    assert [key(r) for r in r1.validation] == [key(r) for r in r2.validation]  # deterministic
    assert [key(r) for r in r1.train] == [key(r) for r in r2.train]
    assert Counter(Path(r.source).name for r in r1.validation) == {"a.jsonl": 4, "b.jsonl": 2}
    assert len(r1.train) == 16 * 3 + 8
    # Never overlaps training, even with a weight that repeats rows.
    assert not {key(r) for r in r1.validation} & {key(r) for r in r1.train}
    assert {key(r) for r in r1.validation} | {key(r) for r in r1.train} == \
        {(str(a), i) for i in range(1, 21)} | {(str(b), i) for i in range(1, 11)}
    vals = {tuple(sorted(key(r) for r in load_data(c, s).validation)) for s in range(6)}
    assert len(vals) > 1  # the split depends on the seed
    # A source's split does not move when another source is added.
    alone = load_data(cfg(src(a, weight=3.0), validation_fraction=0.2), 5)
    assert sorted(key(r) for r in alone.validation) == sorted(key(r) for r in r1.validation if r.source == str(a))
    # Without shuffling the split is still a seeded sample, and training keeps file order.
    ns = load_data(cfg(src(a), validation_fraction=0.2, shuffle=False), 5)
    assert sorted(key(r) for r in ns.validation) == sorted(key(r) for r in r1.validation if r.source == str(a))
    assert [r.line for r in ns.train] == sorted(r.line for r in ns.train)


def test_validation_sources_take_precedence(tmp_path):
    a = _rows_file(tmp_path, "a.jsonl", 10)
    v = _rows_file(tmp_path, "v.jsonl", 3)
    rep = load_data(cfg(src(a), validation_fraction=0.3, validation_sources=[src(v)]), 0)
    assert len(rep.train) == 10 and [r.line for r in rep.validation] == [1, 2, 3]


def test_validation_fraction_that_leaves_no_training_rows(tmp_path):
    a = _rows_file(tmp_path, "a.jsonl", 1)
    m = str(pytest.raises(UserError, load_data, cfg(src(a), validation_fraction=0.5), 0).value)
    assert "data.validation_fraction=0.5" in m and "a.jsonl" in m and "lower it" in m


def test_shuffle_is_deterministic_by_seed(tmp_path):
    a = _rows_file(tmp_path, "a.jsonl", 30)
    b = _rows_file(tmp_path, "b.jsonl", 30)
    c = cfg(src(a), src(b))
    o1 = [key(r) for r in load_data(c, 11).train]
    assert o1 == [key(r) for r in load_data(c, 11).train]
    assert o1 != [key(r) for r in load_data(c, 12).train]
    assert sorted(o1) == sorted({(str(a), i) for i in range(1, 31)} | {(str(b), i) for i in range(1, 31)})
    assert o1 != sorted(o1)  # really shuffled, sources interleaved
    plain = [key(r) for r in load_data(cfg(src(a), src(b), shuffle=False), 11).train]
    assert plain == [(str(a), i) for i in range(1, 31)] + [(str(b), i) for i in range(1, 31)]


# --------------------------------------------------------------------------- whole-file problems


def test_file_level_errors(tmp_path):
    def msg(path, **kw):
        return str(pytest.raises(UserError, load_data, cfg(src(path, **kw)), 0).value)

    assert "does not exist" in msg(tmp_path / "nope.jsonl")
    (tmp_path / "d.jsonl").mkdir()
    assert "is a directory" in msg(tmp_path / "d.jsonl")
    (tmp_path / "t.txt").write_text("hi")
    m = msg(tmp_path / "t.txt")
    assert "unsupported extension '.txt'" in m and ".jsonl, .json, .parquet or .csv" in m
    (tmp_path / "e.jsonl").write_text("")
    assert "e.jsonl is empty" in msg(tmp_path / "e.jsonl")
    (tmp_path / "e.json").write_text("[]")
    assert "holds no rows" in msg(tmp_path / "e.json")
    (tmp_path / "b.json").write_text('[\n{"a": 1},\n{"a": }\n]')
    assert "b.json:3: not valid JSON" in msg(tmp_path / "b.json")
    (tmp_path / "l.csv").write_bytes("instruction,output\ncaf\u00e9,x\n".encode("latin-1"))
    m = msg(tmp_path / "l.csv")
    assert "l.csv:2: not UTF-8" in m and "Re-save the file as UTF-8" in m
    (tmp_path / "g.parquet").write_bytes(b"garbage")
    assert "cannot read as parquet" in msg(tmp_path / "g.parquet")
    assert "no data.sources" in str(pytest.raises(UserError, load_data, DataConfig(), 0).value)
    a = _rows_file(tmp_path, "a.jsonl", 3)
    assert "no training rows are left" in msg(a, weight=0.1)
    bad = jsonl(tmp_path / "allbad.jsonl", [conv("q", "")])
    m = str(pytest.raises(UserError, load_data, cfg(src(bad), on_bad_row="skip"), 0).value)
    assert "allbad.jsonl has no usable rows" in m


def test_hub_id_offline_is_a_user_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = str(pytest.raises(UserError, load_data, cfg(DataSource(path="someorg/somedata")), 0).value)
    assert "someorg/somedata" in m and "unreachable" in m and "local" in m


def test_split_and_order_do_not_depend_on_where_the_file_lives(tmp_path):
    """The same recipe in two clones (different absolute paths) trains on the same rows, in the
    same order, with the same validation split; another seed changes them (not vacuous)."""
    import shutil

    src = Path(__file__).resolve().parents[1] / "recipes" / "data" / "json_extraction_train.jsonl"
    a, b = tmp_path / "clone-a" / "d.jsonl", tmp_path / "somewhere" / "else" / "d.jsonl"
    for p in (a, b):
        p.parent.mkdir(parents=True)
        shutil.copy(src, p)

    def order(path, seed):
        rep = load_data(DataConfig(sources=[DataSource(path=str(path), weight=0.5)], validation_fraction=0.1),
                        seed)
        return ([r.messages for r in rep.train], [r.messages for r in rep.validation])

    assert order(a, 42) == order(b, 42)
    assert order(a, 42) != order(a, 43)
