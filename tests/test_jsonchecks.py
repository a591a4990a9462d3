"""jsonchecks on hand-made outputs whose right answers are worked out by hand."""

import time

import pytest

from qwenft.jsonchecks import (aggregate, aggregate_by_slice, flatten, parse_lenient,
                               parse_strict, score_sample)

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                   "born": {"type": "string", "format": "date"},
                   "email": {"type": "string", "format": "email"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def score(text, schema=PERSON, gold=None, stopped=True, n_tokens=10):
    return score_sample(text, schema=schema, gold=gold, has_gold=gold is not None,
                        stopped=stopped, n_tokens=n_tokens)


# --- parsing ----------------------------------------------------------------

def test_raw_json_is_strict_and_lenient():
    assert parse_strict(' \n{"a": 1}\n ') == (True, {"a": 1})
    assert parse_lenient('{"a": 1}') == (True, {"a": 1})
    assert parse_strict("42") == (True, 42)


@pytest.mark.parametrize("text", ["", "   ", '{"a": 1} trailing', '{"a": 1}{"b": 2}', "NaN",
                                  '{"a": Infinity}', "{'a': 1}"])
def test_strict_rejects(text):
    assert parse_strict(text) == (False, None)


@pytest.mark.parametrize("text, value", [
    ('```json\n{"a": 1}\n```', {"a": 1}),
    ('Here you go:\n```JSON\n[1, 2]\n```\nDone.', [1, 2]),
    ('```\n{"a": "b"}\n```', {"a": "b"}),
    ('```json {"a": 2}```', {"a": 2}),
])
def test_fenced_json_is_lenient_only(text, value):
    assert parse_strict(text) == (False, None)
    assert parse_lenient(text) == (True, value)


def test_json_in_prose_first_balanced_object():
    text = 'Sure! Use {braces} wisely. Answer: {"a": [1, {"b": null}]} and also {"c": 3}.'
    assert parse_lenient(text) == (True, {"a": [1, {"b": None}]})


def test_truncated_json_is_invalid():
    text = '{"name": "Ana", "age": 3'
    assert parse_strict(text) == (False, None)
    assert parse_lenient(text) == (False, None)
    s = score(text, gold={"name": "Ana", "age": 30})
    assert s["valid_strict"] is False and s["valid_lenient"] is False
    assert s["schema_valid"] is False
    assert s["exact_match"] is False
    assert (s["field_tp"], s["field_fp"], s["field_fn"]) == (0, 0, 2)
    assert (s["precision"], s["recall"], s["f1"]) == (0.0, 0.0, 0.0)
    assert s["error"] == "no JSON value found"


# --- schema -----------------------------------------------------------------

def test_valid_sample():
    s = score('{"name": "Ana", "age": 30, "born": "1994-03-04", "email": "a@example.com"}')
    assert s["valid_strict"] and s["valid_lenient"] and s["schema_valid"]
    assert s["error"] is None
    assert s["exact_match"] is None and s["f1"] is None  # no gold


def test_wrong_type_fails_schema():
    s = score('{"name": "Ana", "age": "thirty"}')
    assert s["valid_strict"] is True
    assert s["schema_valid"] is False
    assert "age" in s["error"] and "integer" in s["error"]


def test_extra_key_fails_additional_properties():
    s = score('{"name": "Ana", "age": 30, "nickname": "A"}')
    assert s["schema_valid"] is False
    assert "nickname" in s["error"]


def test_missing_required_fails():
    assert score('{"name": "Ana"}')["schema_valid"] is False


@pytest.mark.parametrize("born, ok", [("2024-03-04", True), ("2024-13-45", False),
                                      ("March 4, 2024", False), ("2024-3-4", False)])
def test_date_format_is_checked(born, ok):
    assert score(f'{{"name": "Ana", "age": 3, "born": "{born}"}}')["schema_valid"] is ok


def test_email_format_is_checked():
    assert score('{"name": "Ana", "age": 3, "email": "ana.example.com"}')["schema_valid"] is False


def test_no_schema_means_not_applicable():
    s = score('{"x": 1}', schema=None)
    assert s["schema_valid"] is None and s["error"] is None


@pytest.mark.parametrize("schema", [{"type": "no-such-type"}, {"properties": 5},
                                    {"$ref": "#/$defs/missing"}, ["not", "a", "schema"],
                                    {"pattern": "("}])
def test_broken_schema_does_not_crash(schema):
    s = score('{"name": "Ana", "age": 3}', schema=schema)
    assert s["schema_valid"] is False
    assert s["error"]


# --- flatten and field scores -----------------------------------------------

def test_flatten_paths():
    value = {"a": {"b": 1, "c": [10, {"d": "x"}]}, "e": [], "f": {}, "g": None}
    assert flatten(value) == {("a.b", "1"), ("a.c[0]", "10"), ("a.c[1].d", '"x"'),
                              ("e", "[]"), ("f", "{}"), ("g", "null")}
    assert flatten(5) == {("", "5")}
    assert flatten([{"k": True}], prefix="root") == {("root[0].k", "true")}


def test_flatten_number_and_bool_identity():
    assert flatten({"a": 2.0}) == flatten({"a": 2})
    assert flatten({"a": True}) != flatten({"a": 1})


GOLD = {"name": "Ana", "age": 30, "tags": ["a", "b"], "address": {"city": "Lyon", "zip": "69001"}}
PARTIAL = '{"name": "Ana", "age": 31, "tags": ["a"], "address": {"city": "Lyon"}, "extra": true}'


def test_partial_answer_exact_f1():
    # gold pairs: name, age=30, tags[0], tags[1], address.city, address.zip   (6)
    # pred pairs: name, age=31, tags[0], address.city, extra                   (5)
    # tp = name, tags[0], address.city = 3; fp = age=31, extra = 2;
    # fn = age=30, tags[1], address.zip = 3
    s = score(PARTIAL, schema=None, gold=GOLD)
    assert (s["field_tp"], s["field_fp"], s["field_fn"]) == (3, 2, 3)
    assert s["precision"] == pytest.approx(3 / 5)
    assert s["recall"] == pytest.approx(3 / 6)
    assert s["f1"] == pytest.approx(6 / 11)
    assert s["exact_match"] is False


def test_exact_match_ignores_key_order_and_int_float():
    s = score('{"age": 30.0, "name": "Ana"}', gold={"name": "Ana", "age": 30})
    assert s["exact_match"] is True
    assert (s["precision"], s["recall"], s["f1"]) == (1.0, 1.0, 1.0)
    assert score('{"a": 1}', schema=None, gold={"a": True})["exact_match"] is False


def test_null_gold_counts_as_gold():
    s = score_sample("null", schema=None, gold=None, has_gold=True, stopped=True, n_tokens=1)
    assert s["exact_match"] is True and s["f1"] == 1.0


# --- clean stop -------------------------------------------------------------

@pytest.mark.parametrize("text, stopped, clean", [
    ('{"a": 1}', True, True),
    (' \n{"a": 1}\n', True, True),
    ('{"a": 1} I hope this helps', True, False),
    ('{"a": 1}', False, False),
    ('```json\n{"a": 1}\n```', True, False),
])
def test_clean_stop(text, stopped, clean):
    assert score(text, schema=None, stopped=stopped)["clean_stop"] is clean


# --- robustness: none of these may raise, and all must be quick ---------------

NASTY = [
    "",
    b"\xff\xfe\x00{\x81\"a\x9c".decode("utf-8", errors="replace"),
    '{"a": "' + "x" * 100_000,
    "[" * 100_000,
    '{"a":' * 20_000,
    "```json\n" + "{" * 100_000,
    '["[",' * 20_000,
    "\x00\x01\x02\ud800",
    '{"a": 1e999}',
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", NASTY, ids=range(len(NASTY)))
def test_nasty_outputs_do_not_crash(text):
    start = time.monotonic()
    s = score(text, gold={"a": 1}, stopped=False)
    assert time.monotonic() - start < 10
    assert set(s) >= {"valid_strict", "valid_lenient", "schema_valid", "exact_match", "f1",
                      "clean_stop", "n_tokens", "error"}
    assert s["clean_stop"] is False
    flatten(parse_lenient(text)[1])


def test_non_string_input_does_not_crash():
    assert score(None, schema=None)["valid_lenient"] is False
    assert score(b'{"a": 1}', schema=None)["valid_strict"] is True


# --- aggregation ------------------------------------------------------------

def test_aggregate_exact_numbers():
    a = score(PARTIAL, schema=None, gold=GOLD, n_tokens=20)          # tp 3 fp 2 fn 3
    b = score('{"x": 1, "y": 2}', schema=None, gold={"x": 1, "y": 2}, n_tokens=10)  # tp 2
    c = score("no json here", schema=None, stopped=False, n_tokens=30)  # no gold
    agg = aggregate([a, b, c], seconds=2.0)
    assert agg["n"] == 3
    assert agg["valid_strict_rate"] == pytest.approx(2 / 3)
    assert agg["valid_lenient_rate"] == pytest.approx(2 / 3)
    assert agg["schema_valid_rate"] is None  # no row had a schema
    assert agg["exact_match_rate"] == pytest.approx(1 / 2)
    # micro: tp 5, fp 2, fn 3
    assert agg["field_precision"] == pytest.approx(5 / 7)
    assert agg["field_recall"] == pytest.approx(5 / 8)
    assert agg["field_f1"] == pytest.approx(2 * 5 / (2 * 5 + 2 + 3))
    assert agg["clean_stop_rate"] == pytest.approx(2 / 3)
    assert agg["mean_output_tokens"] == pytest.approx(20.0)
    assert agg["tokens_per_second"] == pytest.approx(30.0)


def test_aggregate_without_gold_or_rows():
    agg = aggregate([score('{"name": "A", "age": 1}')])
    assert agg["schema_valid_rate"] == 1.0
    assert agg["exact_match_rate"] is None and agg["field_f1"] is None
    assert agg["tokens_per_second"] is None
    empty = aggregate([])
    assert empty["n"] == 0 and empty["valid_strict_rate"] is None


def test_aggregate_by_slice():
    samples = [score('{"name": "A", "age": 1}'), score("oops"), score('{"name": 1}')]
    out = aggregate_by_slice(samples, ["in", "held", "held"], seconds=1.0)
    assert list(out) == ["all", "in", "held"]
    assert out["all"]["n"] == 3 and out["in"]["n"] == 1 and out["held"]["n"] == 2
    assert out["in"]["schema_valid_rate"] == 1.0
    assert out["held"]["schema_valid_rate"] == 0.0
    assert out["held"]["valid_lenient_rate"] == 0.5
    assert out["all"]["tokens_per_second"] == pytest.approx(30.0)
    with pytest.raises(ValueError):
        aggregate_by_slice(samples, ["in"])
