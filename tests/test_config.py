"""Recipes: extends chains, path resolution, typed overrides, strict validation, key docs."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from qwenft.config import (Recipe, apply_overrides, describe, load_recipe, parse_override,
                           read_yaml, recipe_from_dict)
from qwenft.errors import UserError


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def err(fn, *a, **kw) -> str:
    with pytest.raises(UserError) as e:
        fn(*a, **kw)
    return str(e.value)


# --------------------------------------------------------------------------- extends and paths


def test_extends_chain_key_by_key_lists_replaced(tmp_path):
    write(tmp_path / "base" / "grand.yaml", """
run_name: grand
seed: 1
lora: {r: 8, alpha: 16, target_modules: [q_proj, v_proj]}
training: {epochs: 3, batch_size: 2, learning_rate: 1.0e-4}
data:
  sources: [{path: g.jsonl}, {path: g2.jsonl}]
  max_length: 512
eval: {suites: [json_extraction, schema_following], modes: [constrained]}
""")
    write(tmp_path / "mid" / "parent.yaml", """
extends: ../base/grand.yaml
run_name: parent
lora: {r: 32}
training: {batch_size: 4}
eval: {suites: [json_extraction]}
""")
    child = write(tmp_path / "child.yaml", """
extends: mid/parent.yaml
lora: {alpha: 64}
training: {learning_rate: 3.0e-4}
data:
  sources: [{path: c.jsonl, weight: 2.0}]
""")
    r = load_recipe(child)
    assert r.run_name == "parent" and r.seed == 1
    assert (r.lora.r, r.lora.alpha, r.lora.target_modules) == (32, 64.0, ["q_proj", "v_proj"])
    assert (r.training.epochs, r.training.batch_size, r.training.learning_rate) == (3.0, 4, 3e-4)
    # Lists are replaced whole, not merged.
    assert [Path(s.path).name for s in r.data.sources] == ["c.jsonl"]
    assert r.data.sources[0].weight == 2.0
    assert r.data.max_length == 512  # inherited inside a section the child also sets
    assert r.eval.suites == ["json_extraction"] and r.eval.modes == ["constrained"]
    assert r.source_path == str(child)


def test_relative_data_paths_resolve_against_the_file_that_names_them(tmp_path):
    write(tmp_path / "shared" / "base.yaml", """
data:
  sources: [{path: data/train.jsonl}]
  validation_sources: [{path: ../elsewhere/val.jsonl}]
eval: {suites: [suites/mine.jsonl, json_extraction]}
""")
    child = write(tmp_path / "exp" / "child.yaml", "extends: ../shared/base.yaml\nrun_name: c\n")
    r = load_recipe(child)
    assert r.data.sources[0].path == str((tmp_path / "shared" / "data" / "train.jsonl").resolve())
    assert r.data.validation_sources[0].path == str((tmp_path / "elsewhere" / "val.jsonl").resolve())
    assert r.eval.suites == [str(tmp_path / "shared" / "suites/mine.jsonl"), "json_extraction"]
    # The child's own relative paths resolve against the child; Hub ids stay as they are.
    child2 = write(tmp_path / "exp" / "child2.yaml",
                   "extends: ../shared/base.yaml\ndata:\n  sources: [{path: mine.csv}, {path: org/dataset}]\n")
    r2 = load_recipe(child2)
    assert r2.data.sources[0].path == str((tmp_path / "exp" / "mine.csv").resolve())
    assert r2.data.sources[1].path == "org/dataset"


def test_shipped_recipes_all_load(repo_root):
    files = sorted((repo_root / "configs").glob("*.yaml")) + sorted((repo_root / "recipes").glob("*.yaml"))
    assert {f.name for f in files} >= {"sft.yaml", "qlora.yaml", "smoke.yaml", "demo.yaml",
                                       "json_extraction.yaml", "chat.yaml"}
    for f in files:
        r = load_recipe(f)
        for s in r.data.sources + r.data.validation_sources:
            # local files must exist; a Hub dataset id (recipes/chat.yaml) is ORG/NAME
            hub_id = not s.path.startswith("/") and s.path.count("/") == 1 and "." not in Path(s.path).name
            assert hub_id or Path(s.path).is_file(), (f, s.path)
    assert load_recipe(repo_root / "configs" / "qlora.yaml").quantization.load_in_4bit
    smoke = load_recipe(repo_root / "recipes" / "smoke.yaml")
    assert smoke.model.base_model == "tiny-random" and smoke.data.sources[0].weight == 0.1


def test_roundtrip_to_dict(repo_root):
    r = load_recipe(repo_root / "configs" / "sft.yaml")
    again = recipe_from_dict(r.to_dict(), "again")
    assert again.to_dict() == r.to_dict()


# --------------------------------------------------------------------------- overrides


def test_overrides_are_typed_like_yaml(tmp_path, repo_root):
    r = load_recipe(repo_root / "configs" / "sft.yaml", [
        "training.max_steps=10", "lora.use_dora=true", "data.system_prompt=none",
        "training.learning_rate=1e-4", "training.eval_steps=null", "run_name=exp-7",
        "eval.suites=[json_extraction]", "data.sources[0].weight=0.5", "masking.train_on=last_assistant",
        "training.resume=false", "lora.target_modules=[q_proj, v_proj]", "seed=7"])
    assert r.training.max_steps == 10 and type(r.training.max_steps) is int
    assert r.lora.use_dora is True
    assert r.data.system_prompt == "none"
    assert r.training.learning_rate == 1e-4 and type(r.training.learning_rate) is float
    assert r.training.eval_steps is None
    assert r.run_name == "exp-7" and r.seed == 7
    assert r.eval.suites == ["json_extraction"]
    assert r.data.sources[0].weight == 0.5
    assert r.masking.train_on == "last_assistant"
    assert r.training.resume == "false"
    assert r.lora.target_modules == ["q_proj", "v_proj"]


def test_overrides_do_not_mutate_their_input():
    data = {"training": {"max_steps": 1}, "data": {"sources": [{"path": "a.jsonl"}]}}
    out = apply_overrides(data, ["training.max_steps=5", "data.sources[0].weight=2"])
    assert data == {"training": {"max_steps": 1}, "data": {"sources": [{"path": "a.jsonl"}]}}
    assert out["training"]["max_steps"] == 5 and out["data"]["sources"][0]["weight"] == 2


def test_override_parse_and_errors(repo_root):
    assert parse_override("training.max_steps=10") == (["training", "max_steps"], 10)
    assert parse_override("data.system_prompt=You are: terse") == (["data", "system_prompt"], "You are: terse")
    assert parse_override("run_name=") == (["run_name"], "")
    sft = repo_root / "configs" / "sft.yaml"
    assert "section.key=value" in err(load_recipe, sft, ["training.max_steps"])
    assert "empty key" in err(load_recipe, sft, ["training..max_steps=1"])
    m = err(load_recipe, sft, ["training.max_steps=ten"])
    assert "training.max_steps" in m and "expected an integer" in m
    m = err(load_recipe, sft, ["trainig.max_steps=1"])
    assert "Did you mean 'training'" in m
    m = err(load_recipe, sft, ["seed.value=1"])
    assert "'seed' is a value" in m and "seed=VALUE" in m
    m = err(load_recipe, sft, ["data.sources[5].weight=1"])
    assert "data.sources has 1 item(s)" in m and "[5]" in m


# --------------------------------------------------------------------------- validation errors


def _recipe(tmp_path, text: str, name: str = "r.yaml") -> Path:
    return write(tmp_path / name, text)


@pytest.mark.parametrize("text,must", [
    ("trainig: {max_steps: 1}\n", ["trainig: unknown key", "Did you mean 'training'", "Allowed here:"]),
    ("training: {lerning_rate: 0.1}\n", ["training.lerning_rate: unknown key", "Did you mean 'learning_rate'"]),
    ("data: {sources: [{path: a.jsonl}, {pth: b.jsonl}]}\n",
     ["data.sources[1].pth: unknown key", "Did you mean 'path'", "data.sources[1].path: is required"]),
    ("data: {sources: [{path: a.jsonl, wieght: 2}]}\n", ["data.sources[0].wieght", "Did you mean 'weight'"]),
    ("training: {max_steps: ten}\n", ["training.max_steps: got 'ten' (str), expected an integer"]),
    ("training: {max_steps: 10.5}\n", ["training.max_steps", "expected an integer"]),
    ("lora: {use_dora: maybe}\n", ["lora.use_dora", "expected true/false"]),
    ("data: {system_prompt: null}\n", ["data.system_prompt: got an empty value (null)", "write: none"]),
    ("run_name:\n", ["run_name: got an empty value (null), expected a string"]),
    ("lora: {r: 0}\n", ["lora.r: 0 is out of range; allowed 1 <= value <= 4096"]),
    ("lora: {dropout: 1.5}\n", ["lora.dropout", "allowed 0.0 <= value <= 1.0"]),
    ("data: {validation_fraction: 0.7}\n", ["data.validation_fraction", "0.0 <= value <= 0.5"]),
    ("data: {sources: [{path: a.jsonl, weight: -1}]}\n", ["data.sources[0].weight", "value >= 0.0"]),
    ("training: {learning_rate: .inf}\n", ["training.learning_rate", "finite number"]),
    ("model: {dtype: float32}\n", ["model.dtype: got 'float32', allowed: auto, bf16, fp16, fp32"]),
    ("eval: {modes: [greedy]}\n", ["eval.modes[0]", "allowed: unconstrained, constrained"]),
    ("data: {on_bad_row: ignore}\n", ["data.on_bad_row", "allowed: error, skip"]),
    ("training: 5\n", ["training: got 5, expected a mapping of TrainingConfig keys"]),
    ("data: {sources: a.jsonl}\n", ["data.sources", "expected a list of mappings (DataSource); write [{path: a.jsonl}]"]),
    ("data: {sources: [a.jsonl]}\n", ["data.sources[0]: got 'a.jsonl'", "write {path: a.jsonl}"]),
    ("run_name: a/b\n", ["run_name", "plain directory name"]),
    ("training: {epochs: 0}\n", ["training.epochs", "nothing would be trained"]),
    ("lora: {target_modules: []}\n", ["lora.target_modules", "all-linear"]),
    ("training: {resume: /no/such/ckpt}\n", ["training.resume", "existing checkpoint path"]),
    ("quantization: {load_in_4bit: true, compute_dtype: bf16}\nmodel: {dtype: fp16}\n",
     ["quantization.compute_dtype", "mixes dtypes"]),
    ("data: {sources: [{path: ''}]}\n", ["data.sources[0].path: is empty"]),
    ("data: {validation_sources: [{path: ''}]}\n", ["data.validation_sources[0].path: is empty"]),
])
def test_invalid_values_name_file_key_and_what_is_allowed(tmp_path, text, must):
    m = err(load_recipe, _recipe(tmp_path, text))
    assert str(tmp_path / "r.yaml") in m
    for s in must:
        assert s in m, (s, m)


def test_all_errors_are_reported_at_once(tmp_path):
    m = err(load_recipe, _recipe(tmp_path, "lora: {r: 0, dropout: 2}\ntraining: {max_steps: x}\nfoo: 1\n"))
    for key in ("lora.r", "lora.dropout", "training.max_steps", "foo"):
        assert key in m


def test_empty_section_means_its_defaults(tmp_path):
    r = load_recipe(_recipe(tmp_path, "lora:\ntraining: {max_steps: 3}\n"))
    assert r.lora.r == 16 and r.training.max_steps == 3


def test_extends_cycle(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: c.yaml\n")
    write(tmp_path / "c.yaml", "extends: a.yaml\n")
    m = err(load_recipe, tmp_path / "a.yaml")
    assert "cycle" in m and "a.yaml -> " in m and "b.yaml" in m and "c.yaml" in m
    write(tmp_path / "self.yaml", "extends: self.yaml\n")
    assert "cycle" in err(load_recipe, tmp_path / "self.yaml")


def test_extends_missing_or_malformed(tmp_path):
    m = err(load_recipe, _recipe(tmp_path, "extends: nowhere/parent.yaml\n"))
    assert "r.yaml" in m and "nowhere/parent.yaml" in m and "does not exist" in m and "relative to the recipe" in m
    m = err(load_recipe, _recipe(tmp_path, "extends: [a.yaml, b.yaml]\n", "r2.yaml"))
    assert "r2.yaml" in m and "one path string" in m


def test_invalid_yaml_names_the_line(tmp_path):
    m = err(load_recipe, _recipe(tmp_path, "run_name: x\ntraining:\n  max_steps: 1\n   batch_size: 2\n"))
    assert "r.yaml" in m and "not valid YAML at line 4" in m and "Fix the syntax there" in m
    m = err(load_recipe, _recipe(tmp_path, "run_name: [unclosed\nseed: 1\n", "r2.yaml"))
    assert re.search(r"r2\.yaml is not valid YAML at line \d+", m)


def test_duplicate_keys_are_refused(tmp_path):
    m = err(load_recipe, _recipe(tmp_path, "training:\n  max_steps: 1\n  max_steps: 2\n"))
    assert "line 3" in m and "key 'max_steps' appears twice (first at line 2)" in m


def test_unreadable_recipes(tmp_path):
    m = err(load_recipe, write(tmp_path / "latin.yaml", b"run_name: x\n# caf\xe9\n"))
    assert "latin.yaml is not UTF-8" in m and "line 2" in m and "save it as UTF-8" in m
    (tmp_path / "dir.yaml").mkdir()
    m = err(load_recipe, tmp_path / "dir.yaml")
    assert "dir.yaml is a directory" in m and "give a .yaml file" in m
    m = err(load_recipe, write(tmp_path / "empty.yaml", "# only a comment\n"))
    assert "empty.yaml is empty" in m and "data:" in m
    m = err(load_recipe, write(tmp_path / "list.yaml", "- a\n- b\n"))
    assert "list.yaml must be a YAML mapping" in m and "got a list" in m
    m = err(load_recipe, tmp_path / "missing.yaml")
    assert "missing.yaml does not exist" in m
    assert read_yaml(write(tmp_path / "bom.yaml", "\ufeffseed: 3\n")) == {"seed": 3}


def test_recipe_from_dict_defaults():
    r = recipe_from_dict({})
    assert r == Recipe(source_path="<dict>")


# --------------------------------------------------------------------------- describe


def _all_keys(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        out.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            out += _all_keys(hints[f.name], prefix + f.name + ".")
    return out


def test_describe_lists_every_key_with_a_doc():
    lines = describe()
    keys = _all_keys(Recipe)
    assert len(lines) == len(keys)
    for key, line in zip(keys, lines):
        assert line.startswith(key + ":") or line.startswith(key + " ("), (key, line)
        doc = line.split("): ", 1)[1] if " (" in line.split(":")[0] else line.split(":  ", 1)[1]
        assert doc.strip(), f"{key} has no doc"
    assert not any("source_path" in ln for ln in lines)
    # Defaults and types are shown.
    assert any(ln.startswith("training.learning_rate (a number, default 0.0002): ") for ln in lines)
    assert any(ln.startswith("model.dtype ('auto' | 'bf16' | 'fp16' | 'fp32', default 'bf16')") for ln in lines)
    # DataSource keys (list items) are documented too.
    from qwenft.config import DataSource

    for line in describe(DataSource):
        assert line.split("): ", 1)[1].strip()


def test_override_values_that_are_plain_text_stay_text():
    assert parse_override("run_name=exp #2")[1] == "exp #2"
    assert parse_override("data.system_prompt=- be terse")[1] == "- be terse"
    assert parse_override("run_name='123'")[1] == "123"
    assert parse_override("eval.gates={a.b.c: 0.5}")[1] == {"a.b.c": 0.5}
    assert parse_override("training.learning_rate=2e-4")[1] == 2e-4
    assert parse_override("lora.use_dora=false")[1] is False


def test_yaml_anchors_and_merge_keys_still_work(tmp_path):
    from qwenft.config import yaml_load

    # A merged key may be overridden: that is not a duplicate.
    assert yaml_load("base: &b {a: 1, b: 2}\nx:\n  <<: *b\n  a: 3\n")["x"] == {"a": 3, "b": 2}
    r = load_recipe(_recipe(tmp_path, "eval: {modes: &m [constrained]}\nlora:\n  <<: {r: 8, alpha: 16}\n  alpha: 64\n"))
    assert (r.lora.r, r.lora.alpha) == (8, 64.0)
