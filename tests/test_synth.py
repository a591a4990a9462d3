"""The synthetic data generator: deterministic, valid, current, and leak-free."""

import json
import re

import pytest
from jsonschema import Draft202012Validator

from qwenft import synth

VALIDATOR_KW = {"format_checker": Draft202012Validator.FORMAT_CHECKER}


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def shipped(repo_root):
    return {key: _rows(repo_root / rel) for key, rel in synth.DEFAULT_FILES.items()}


def _prompt_schema(prompt: str) -> dict:
    # Passages contain no braces, so the first JSON object in a prompt is its schema.
    return synth._embedded_objects(prompt)[0]


def _matches(template: str, prompt: str) -> bool:
    parts = re.split(r"\{passage\}|\{schema\}", template)
    return re.fullmatch("(.*?)".join(re.escape(p) for p in parts), prompt, re.S) is not None


def test_generation_is_deterministic():
    assert synth.make_training_rows(30, seed=3) == synth.make_training_rows(30, seed=3)
    assert synth.make_extraction_suite(5, 5, seed=4) == synth.make_extraction_suite(5, 5, seed=4)
    assert synth.make_schema_following_suite(9) == synth.make_schema_following_suite(9)
    assert synth.make_training_rows(30, seed=3) != synth.make_training_rows(30, seed=4)


def test_written_files_equal_committed_files(tmp_path, repo_root):
    written = synth.write_default_files(tmp_path)
    assert set(written) == set(synth.DEFAULT_FILES)
    for key, path in written.items():
        committed = repo_root / synth.DEFAULT_FILES[key]
        assert path.read_bytes() == committed.read_bytes(), (
            f"{committed} is stale; run: python -m qwenft.synth")


def test_main_check(tmp_path, repo_root, capsys):
    assert synth.main(["--check", "--root", str(repo_root)]) == 0
    assert synth.main(["--check", "--root", str(tmp_path)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert synth.main(["--root", str(tmp_path)]) == 0
    assert synth.main(["--check", "--root", str(tmp_path)]) == 0


def test_sizes(shipped):
    assert len(shipped["train"]) == 400 and len(shipped["val"]) == 40
    slices = [r["slice"] for r in shipped["json_extraction"]]
    assert slices.count("in_distribution") == 40 and slices.count("held_out") == 40
    assert len(shipped["schema_following"]) == 30


@pytest.mark.parametrize("key", ["train", "val"])
def test_training_answers_are_valid_raw_json(shipped, key):
    for row in shipped[key]:
        user, assistant = row["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        answer = assistant["content"]
        gold = json.loads(answer)
        assert answer == json.dumps(gold, ensure_ascii=False)  # raw JSON, nothing else
        schema = _prompt_schema(user["content"])
        assert schema["title"] in synth.train_schema_types()
        Draft202012Validator(schema, **VALIDATOR_KW).validate(gold)
        assert len(user["content"]) < 900 and len(answer) < 300  # CPU-sized


def test_training_uses_train_phrasings_only(shipped):
    for row in shipped["train"]:
        prompt = row["messages"][0]["content"]
        assert any(_matches(t, prompt) for t in synth.TRAIN_INSTRUCTIONS)
        assert not any(_matches(t, prompt) for t in synth.HELD_OUT_INSTRUCTIONS)


def test_suite_golds_validate(shipped):
    for row in shipped["json_extraction"]:
        Draft202012Validator.check_schema(row["schema"])
        Draft202012Validator(row["schema"], **VALIDATOR_KW).validate(row["gold"])
        assert _prompt_schema(row["prompt"]) == row["schema"]
    for row in shipped["schema_following"]:
        Draft202012Validator.check_schema(row["schema"])
        assert "gold" not in row


def test_split_types():
    train, held = set(synth.train_schema_types()), set(synth.held_out_schema_types())
    assert len(held) >= 3 and not train & held


def test_slices_use_the_right_types_and_phrasings(shipped):
    held_types = set(synth.held_out_schema_types())
    for row in shipped["json_extraction"]:
        title = row["schema"]["title"]
        if row["slice"] == "held_out":
            assert title in held_types
            assert any(_matches(t, row["prompt"]) for t in synth.HELD_OUT_INSTRUCTIONS)
            assert not any(_matches(t, row["prompt"]) for t in synth.TRAIN_INSTRUCTIONS)
        else:
            assert row["slice"] == "in_distribution" and title in synth.train_schema_types()
            assert any(_matches(t, row["prompt"]) for t in synth.TRAIN_INSTRUCTIONS)
    following = {r["slice"] for r in shipped["schema_following"]}
    assert following == {"train_types", "held_out_types", "generic"}


def test_shipped_files_do_not_overlap(shipped):
    training = shipped["train"] + shipped["val"]
    suites = shipped["json_extraction"] + shipped["schema_following"]
    assert synth.check_no_overlap(training, suites) == []
    assert synth.check_no_overlap(shipped["train"], shipped["val"]) == []


def test_overlap_check_catches_a_leaked_prompt(shipped):
    leaked = shipped["json_extraction"][3]
    bad = shipped["train"] + [{"messages": [{"role": "user", "content": leaked["prompt"]},
                                            {"role": "assistant", "content": "{}"}]}]
    problems = synth.check_no_overlap(bad, shipped["json_extraction"])
    assert any(leaked["id"] in p and "prompt" in p for p in problems)


def test_overlap_check_catches_a_leaked_held_out_schema(shipped):
    held = next(r for r in shipped["json_extraction"] if r["slice"] == "held_out")
    prompt = f"Some other passage.\nSchema: {synth.compact(held['schema'])}"
    bad = shipped["train"] + [{"messages": [{"role": "user", "content": prompt},
                                            {"role": "assistant", "content": "{}"}]}]
    problems = synth.check_no_overlap(bad, shipped["json_extraction"])
    assert any(held["id"] in p and "schema" in p for p in problems)
    # The same schema with its keys reordered is still caught (canonical comparison).
    reordered = dict(reversed(list(held["schema"].items())))
    bad[-1]["messages"][0]["content"] = f"Text.\n{json.dumps(reordered)}"
    assert synth.check_no_overlap(bad, [held])


def test_in_distribution_schemas_may_repeat_training_schemas(shipped):
    # Train-type schemas are meant to be seen in training; only prompts must differ.
    row = next(r for r in shipped["json_extraction"] if r["slice"] == "in_distribution")
    train = [{"messages": [{"role": "user", "content": synth.compact(row["schema"])}]}]
    assert synth.check_no_overlap(train, [row]) == []
