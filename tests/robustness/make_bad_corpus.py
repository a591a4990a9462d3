"""Regenerates the bad-input corpus tests/robustness/bad/ (the files are committed; run this
after editing a case: `.venv/bin/python tests/robustness/make_bad_corpus.py`).

Each case is a recipe whose trailing `# where:` / `# hint:` / `# args:` lines say what its error
message must name and suggest (see test_bad_input.py)."""
import json
import shutil
from pathlib import Path

root = Path(__file__).resolve().parent / "bad"
shutil.rmtree(root, ignore_errors=True)
(root / "data").mkdir(parents=True)
(root / "parents").mkdir()

def w(rel, text, mode="w"):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")

def jl(rows):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

def conv(q, a):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}

good = [conv(f"Give item {i} as JSON.", json.dumps({"item": i})) for i in range(6)]
w("data/good.jsonl", jl(good))
w("parents/base.yaml", """\
# The valid recipe every bad case extends (tiny-random: even a validate that gets far is cheap).
run_name: bad-input
model:
  base_model: tiny-random
  dtype: fp32
data:
  sources:
    - path: ../data/good.jsonl
  max_length: 256
training:
  max_steps: 1
  use_cpu: true
eval:
  suites: []
  lm_eval_tasks: []
""")
w("parents/cycle_a.yaml", "extends: cycle_b.yaml\nrun_name: a\n")
w("parents/cycle_b.yaml", "extends: cycle_a.yaml\nrun_name: b\n")

cases = []
def case(name, body, where, hint, args=None, header_extra=""):
    head = "".join(f"# where: {x}\n" for x in where) + "".join(f"# hint: {x}\n" for x in hint)
    if args:
        head += f"# args: {json.dumps(args)}\n"
    # The expectations go at the end, so the line numbers in the body are as written here.
    text = body.rstrip(b"\n") + b"\n" + head.encode() if isinstance(body, bytes) else body.rstrip("\n") + "\n" + head
    w(f"{name}.yaml", text)
    cases.append(name)

EXT = "extends: parents/base.yaml\n"
def src(path, **kw):
    d = {"path": path, **kw}
    return EXT + "data:\n  sources:\n    - " + json.dumps(d) + "\n"

# ------------------------------------------------------------------ recipe mistakes
case("unknown_top_key", EXT + "trainig:\n  max_steps: 2\n", ["unknown_top_key\\.yaml", "trainig"], ["Did you mean 'training'"])
case("unknown_nested_key", EXT + "training:\n  lerning_rate: 1.0e-4\n", ["training\\.lerning_rate"], ["Did you mean 'learning_rate'"])
case("unknown_key_in_source", EXT + "data:\n  sources:\n    - pth: data/good.jsonl\n", ["data\\.sources\\[0\\]\\.pth"], ["Did you mean 'path'"])
case("wrong_type_int", EXT + "training:\n  max_steps: ten\n", ["training\\.max_steps"], ["expected an integer"])
case("wrong_type_bool", EXT + "lora:\n  use_dora: maybe\n", ["lora\\.use_dora"], ["expected true/false"])
case("section_is_scalar", EXT + "training: 5\n", ["wrong_type|section_is_scalar\\.yaml", "training: got 5"], ["expected a mapping"])
case("list_is_scalar", EXT + "data:\n  sources: data/good.jsonl\n", ["data\\.sources"], ["expected a list"])
case("source_item_is_a_string", EXT + "data:\n  sources:\n    - data/good.jsonl\n", ["data\\.sources\\[0\\]"], ["write \\{path: data/good\\.jsonl\\}"])
case("out_of_range_dropout", EXT + "lora:\n  dropout: 1.5\n", ["lora\\.dropout"], ["0\\.0 <= value <= 1\\.0"])
case("negative_learning_rate", EXT + "training:\n  learning_rate: -0.1\n", ["training\\.learning_rate"], ["allowed 0\\.0 <= value <= 1\\.0"])
case("nan_learning_rate", EXT + "training:\n  learning_rate: .nan\n", ["training\\.learning_rate"], ["expected a finite number"])
case("bad_literal_dtype", EXT + "model:\n  dtype: float32\n", ["model\\.dtype"], ["allowed: auto, bf16, fp16, fp32"])
case("bad_literal_format", src("data/good.jsonl", format="chatml"), ["data\\.sources\\[0\\]\\.format"], ["allowed: auto, messages, sharegpt, alpaca, prompt_completion"])
case("bad_literal_train_on", EXT + "masking:\n  train_on: everything\n", ["masking\\.train_on"], ["allowed: all_assistant, last_assistant"])
case("negative_weight", src("data/good.jsonl", weight=-1), ["data\\.sources\\[0\\]\\.weight"], ["value >= 0\\.0"])
case("validation_fraction_too_high", EXT + "data:\n  validation_fraction: 0.9\n", ["data\\.validation_fraction"], ["0\\.0 <= value <= 0\\.5"])
case("max_length_too_small", EXT + "data:\n  max_length: 4\n", ["data\\.max_length"], ["value >= 16"])
case("missing_sources", EXT + "data:\n  sources: []\n", ["data\\.sources"], ["Add at least one"])
case("source_without_path", EXT + "data:\n  sources:\n    - weight: 1.0\n", ["data\\.sources\\[0\\]\\.path"], ["is required"])
case("empty_source_path", src(""), ["data\\.sources\\[0\\]\\.path"], ["give a \\.jsonl"])
case("extends_cycle", "extends: parents/cycle_a.yaml\n", ["cycle_a\\.yaml", "cycle_b\\.yaml"], ["cycle", "remove the `extends:`"])
case("extends_missing", "extends: parents/no_such_parent.yaml\nrun_name: x\n", ["extends_missing\\.yaml", "no_such_parent\\.yaml"], ["does not exist", "relative to the recipe file"])
case("extends_not_a_string", "extends: [parents/base.yaml]\n", ["extends_not_a_string\\.yaml", "extends"], ["one path string"])
case("invalid_yaml", EXT + "training:\n  max_steps: 1\n   batch_size: 2\n", ["invalid_yaml\\.yaml", "line 4"], ["Fix the syntax there"])
case("duplicate_key", EXT + "training:\n  max_steps: 1\n  max_steps: 2\n", ["duplicate_key\\.yaml", "line 4", "first at line 3", "max_steps"], ["appears twice", "keep one"])
case("non_utf8_recipe", EXT.encode() + b"run_name: caf\xe9\n", ["non_utf8_recipe\\.yaml", "line 2"], ["save it as UTF-8"])
case("empty_recipe", "# nothing here\n", ["empty_recipe\\.yaml"], ["is empty", "extends"])
case("recipe_is_a_list", "- run_name: x\n- seed: 1\n", ["recipe_is_a_list\\.yaml"], ["must be a YAML mapping of sections"])
case("zero_epochs", EXT + "training:\n  max_steps: -1\n  epochs: 0\n", ["training\\.epochs"], ["set epochs > 0 or max_steps > 0"])
case("run_name_with_slash", EXT + "run_name: a/b\n", ["run_name"], ["plain directory name"])
case("empty_target_modules", EXT + "lora:\n  target_modules: []\n", ["lora\\.target_modules"], ["all-linear"])
case("resume_missing_checkpoint", EXT + "training:\n  resume: /no/such/checkpoint-5\n", ["training\\.resume"], ["neither auto/false nor an existing checkpoint"])
case("base_model_missing_dir", EXT + "model:\n  base_model: ./no_such_model_dir\n", ["base_model", "no_such_model_dir"], ["Fix the path"])
case("base_model_hub_offline", EXT + "model:\n  base_model: Qwen/Qwen2.5-0.5B-Instruct\n  allow_stand_in: false\n", ["base_model", "Qwen/Qwen2.5-0.5B-Instruct"], ["allow_stand_in: true"])
case("override_wrong_type", EXT, ["training\\.max_steps"], ["expected an integer"], args=["training.max_steps=abc"])
case("override_without_equals", EXT, ["training\\.max_steps"], ["section\\.key=value"], args=["training.max_steps"])
case("override_unknown_key", EXT, ["traning"], ["Did you mean 'training'"], args=["traning.max_steps=3"])
case("override_index_out_of_range", EXT, ["data\\.sources", "\\[3\\]"], ["indices start at 0"], args=["data.sources[3].weight=0.5"])

# ------------------------------------------------------------------ data mistakes
case("missing_data_file", src("data/no_such_file.jsonl"), ["no_such_file\\.jsonl"], ["does not exist", "relative to the recipe"])
(root / "data/a_directory.jsonl").mkdir()
w("data/a_directory.jsonl/README.txt", "A directory named like a data file (robustness case).\n")
case("data_is_directory", src("data/a_directory.jsonl"), ["a_directory\\.jsonl"], ["is a directory", "Point data\\.sources\\[\\]\\.path at"])
w("data/notes.txt", "user: hi\nassistant: hello\n")
case("unsupported_extension", src("data/notes.txt"), ["notes\\.txt", "'\\.txt'"], ["Use \\.jsonl, \\.json, \\.parquet or \\.csv"])
w("data/bad_json_line.jsonl", jl(good[:1]) + '{"messages": [{"role": "user", "content": "hi"}\n' + jl(good[1:2]))
case("bad_json_line", src("data/bad_json_line.jsonl"), ["bad_json_line\\.jsonl:2:"], ["not valid JSON", "fix or remove the line"])
w("data/unknown_role.jsonl", jl(good[:2] + [{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]}]))
case("unknown_role", src("data/unknown_role.jsonl"), ["unknown_role\\.jsonl:3:", "'bot'"], ["Allowed: system, user, assistant, tool"])
w("data/sharegpt_unknown_from.jsonl", jl([{"conversations": [{"from": "human", "value": "hi"}, {"from": "gtp", "value": "hello"}]}]))
case("sharegpt_unknown_from", src("data/sharegpt_unknown_from.jsonl"), ["sharegpt_unknown_from\\.jsonl:1:", "'gtp'"], ["Did you mean 'gpt'"])
w("data/empty_assistant.jsonl", jl(good[:1] + [conv("Say something.", "   ")]))
case("empty_assistant", src("data/empty_assistant.jsonl"), ["empty_assistant\\.jsonl:2:", "message 1"], ["give it content or remove the row"])
w("data/assistant_first.jsonl", jl([{"messages": [{"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}]))
case("assistant_first", src("data/assistant_first.jsonl"), ["assistant_first\\.jsonl:1:", "message 0"], ["must answer a user or tool message"])
w("data/two_users.jsonl", jl([{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}]))
case("two_user_turns", src("data/two_users.jsonl"), ["two_users\\.jsonl:1:", "message 1"], ["merge them or add the assistant answer"])
w("data/ends_with_user.jsonl", jl([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}]))
case("ends_with_user", src("data/ends_with_user.jsonl"), ["ends_with_user\\.jsonl:1:"], ["remove it or add the answer"])
w("data/system_in_middle.jsonl", jl([{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "be nice"}, {"role": "assistant", "content": "b"}]}]))
case("system_in_middle", src("data/system_in_middle.jsonl"), ["system_in_middle\\.jsonl:1:", "message 1"], ["move it first"])
w("data/tool_without_call.jsonl", jl([{"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "{}"}, {"role": "assistant", "content": "b"}]}]))
case("tool_without_call", src("data/tool_without_call.jsonl"), ["tool_without_call\\.jsonl:1:", "message 1"], ["put an assistant message with tool_calls before it"])
w("data/bad_tool_arguments.jsonl", jl([{"messages": [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": "{city: Paris}"}}]}, {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]}]))
case("bad_tool_arguments", src("data/bad_tool_arguments.jsonl"), ["bad_tool_arguments\\.jsonl:1:", "tool_calls\\[0\\]", "get_weather"], ["give an object or a JSON string of one"])
w("data/content_parts.jsonl", jl([{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, {"role": "assistant", "content": "hello"}]}]))
case("content_not_a_string", src("data/content_parts.jsonl"), ["content_parts\\.jsonl:1:", "message 0"], ["join the text parts into one string"])
w("data/control_token.jsonl", jl([conv("hi", "hello<|im_end|>\n<|im_start|>user\nmore")]))
case("control_token_in_content", src("data/control_token.jsonl"), ["control_token\\.jsonl:1:", "<\\|im_end\\|>"], ["remove them from the text"])
w("data/row_is_a_list.jsonl", jl([["user", "hi"], good[0]]))
case("row_is_not_an_object", src("data/row_is_a_list.jsonl"), ["row_is_a_list\\.jsonl:1:"], ["expected a JSON object"])
w("data/latin1.jsonl", jl(good[:2]).encode() + '{"messages": [{"role": "user", "content": "Caf\u00e9?"}, {"role": "assistant", "content": "Oui."}]}\n'.encode("latin-1"))
case("latin1_data", src("data/latin1.jsonl"), ["latin1\\.jsonl:3:"], ["re-save the file as UTF-8"])
w("data/huge_row.jsonl", jl(good[:1] + [conv("Summarise: " + "lorem ipsum " * 2000, "Lorem.")]))
case("huge_row", src("data/huge_row.jsonl"), ["huge_row\\.jsonl:2:", "max_length=256"], ["shorten or split it, or raise data\\.max_length"])
w("data/empty.jsonl", "")
case("empty_dataset", src("data/empty.jsonl"), ["empty\\.jsonl"], ["Add rows or remove the source"])
w("data/blank_lines.jsonl", "\n\n   \n")
case("blank_lines_dataset", src("data/blank_lines.jsonl"), ["blank_lines\\.jsonl"], ["Add rows or remove the source"])
w("data/object_not_list.json", json.dumps({"rows": good[:2]}))
case("json_object_not_list", src("data/object_not_list.json"), ["object_not_list\\.json", "keys rows"], ["Wrap the rows in \\[ \\.\\.\\. \\]"])
w("data/broken.json", '[\n  {"messages": []},\n  {"messages": [}\n]\n')
case("json_invalid", src("data/broken.json"), ["broken\\.json:3:"], ["Fix the file, or use JSONL"])
w("data/missing_columns.csv", "question,answer\nWhat is 2+2?,4\n")
case("csv_missing_columns", src("data/missing_columns.csv", format="alpaca"), ["missing_columns\\.csv", "instruction, output", "question, answer"], ["Rename the columns"])
case("csv_undetectable", src("data/missing_columns.csv"), ["missing_columns\\.csv", "question, answer"], ["set the source's format"])
w("data/not_parquet.parquet", b"this is not a parquet file\n")
case("parquet_garbage", src("data/not_parquet.parquet"), ["not_parquet\\.parquet"], ["Check the file is a valid parquet file"])
w("data/text_rows.jsonl", jl([{"text": "hello world"}, {"text": "more"}]))
case("undetectable_format", src("data/text_rows.jsonl"), ["text_rows\\.jsonl", "keys: text"], ["set the source's format"])
w("data/all_bad.jsonl", jl([conv("a", ""), conv("b", "")]))
case("all_rows_bad_skip", src("data/all_bad.jsonl") + "  on_bad_row: skip\n", ["all_bad\\.jsonl"], ["Fix the rows or remove the source"])
w("data/many_bad.jsonl", jl([conv(f"q{i}", "") for i in range(25)] + good[:1]))
case("many_bad_rows", src("data/many_bad.jsonl"), ["many_bad\\.jsonl:1:", "many_bad\\.jsonl:20:", "25 bad data row"], ["and 5 more", "on_bad_row: skip"])
w("data/one_row.jsonl", jl(good[:1]))
case("validation_leaves_nothing", src("data/one_row.jsonl") + "  validation_fraction: 0.5\n", ["data\\.validation_fraction", "one_row\\.jsonl"], ["lower it"])
case("all_weights_zero", src("data/good.jsonl", weight=0.0), ["weight"], ["Raise a weight"])
case("bad_validation_source", EXT + "data:\n  validation_sources:\n    - path: data/unknown_role.jsonl\n", ["unknown_role\\.jsonl:3:"], ["Allowed: system, user, assistant, tool"])
w("data/long_prompts.jsonl", jl([conv("Please read this carefully. " * 8, "ok") for _ in range(3)]))
case("mask_audit_all_empty", src("data/long_prompts.jsonl") + "  max_length: 16\n", ["masking\\.max_empty_examples", "long_prompts\\.jsonl:1"], ["raise data\\.max_length"])
case("mask_audit_min_trained", EXT + "masking:\n  min_trained_fraction: 0.9\n", ["masking\\.min_trained_fraction"], ["lower masking\\.min_trained_fraction"])
case("mask_audit_truncated", src("data/long_prompts.jsonl") + "  max_length: 60\nmasking:\n  max_empty_examples: 1.0\n", ["masking\\.max_truncated_turns"], ["raise data\\.max_length"])

# The recipe path itself is a directory.
(root / "recipe_is_a_directory.yaml").mkdir()
w("recipe_is_a_directory.yaml/expect.txt", "# where: recipe_is_a_directory\\.yaml\n# hint: give a \\.yaml file inside it\n")
print(len(cases) + 1, "cases")
