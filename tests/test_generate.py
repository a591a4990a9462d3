"""qwenft.generate: loading any target, greedy batched generation, schema-constrained decoding."""

import json
import time

import pytest
import torch

from qwenft.generate import (GenResult, generate_batch, greedy_generation_config, load_model_for_eval,
                             render_prompts)
from qwenft.jsonchecks import score_sample
from qwenft.suites import load_suite

# Shipped-suite schemas without `format`/`pattern`/`uniqueItems` (xgrammar can enforce all of
# their keywords): flat, nested, enums, arrays of objects, minItems, additionalProperties maps.
PLAIN_SCHEMA_ROWS = ["ext-in-002-product", "ext-in-005-book", "ext-held-002-recipe",
                     "ext-held-005-contact", "sf-003-point", "sf-006-rgb_color", "sf-009-todo_list",
                     "sf-015-stock_counts"]
# A `format: date` schema: xgrammar's date grammar admits impossible dates (month 11 day 31,
# year 0000), so these rows are always syntactically valid JSON but may fail the schema.
DATE_SCHEMA_ROW = "ext-in-004-event"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model_for_eval("tiny-random")


@pytest.fixture(scope="module")
def sharp(tiny_model_dir):
    """The tiny model with large random weights: its greedy outputs differ from prompt to prompt
    (the stock tiny model answers every prompt with newlines), so batch parity means something."""
    lm = load_model_for_eval("tiny-random")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in lm.model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.35)
    return lm


@pytest.fixture(scope="module")
def suite_rows(repo_root):
    rows = load_suite(repo_root / "eval/suites/json_extraction.jsonl")
    rows += load_suite(repo_root / "eval/suites/schema_following.jsonl")
    return {r.id: r for r in rows}


def _convs(n):
    words = ["alpha", "beta gamma", "x" * 37, "tell me a story about a cat", "1 2 3", "json please",
             "Why is the sky blue? Explain at length, with physics.", "ok", "héllo wörld ☃", "{\"a\": 1}"]
    return [[{"role": "user", "content": words[i % len(words)] + f" #{i}"}] for i in range(n)]


def test_loaded_model_is_greedy_and_labelled(tiny):
    gc = tiny.model.generation_config
    assert gc.do_sample is False and gc.repetition_penalty == 1.0
    assert set(gc.eos_token_id) == {tiny.tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                    tiny.tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    assert gc.pad_token_id == tiny.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert "tiny random-weight" in tiny.label and tiny.record["dtype"] == "float32"
    assert not tiny.model.training and tiny.model.config.use_cache


def test_batch_size_parity_and_left_padding(sharp, monkeypatch):
    convs = _convs(10)
    seen = []
    real_generate = sharp.model.generate

    def spy(*args, **kwargs):
        seen.append(kwargs["attention_mask"].clone())
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(sharp.model, "generate", spy)
    one = generate_batch(sharp.model, sharp.tokenizer, convs, max_new_tokens=12, batch_size=1,
                         progress=False)
    eight = generate_batch(sharp.model, sharp.tokenizer, convs, max_new_tokens=12, batch_size=8,
                           progress=False)
    # fp32 on CPU: greedy outputs agree exactly (transformers derives position ids from the
    # attention mask, so left padding does not shift positions).
    assert [r.text for r in one] == [r.text for r in eight]
    assert [r.n_tokens for r in one] == [r.n_tokens for r in eight]
    assert len({r.text for r in one}) > 5, "outputs should differ between prompts"
    batched = [m for m in seen if m.shape[0] > 1]
    assert batched, "no batch was generated"
    assert any(bool((m == 0).any()) for m in batched), "some batch should need padding"
    for mask in batched:  # left padding: zeros only at the start of a row, every row ends in 1
        assert bool(mask[:, -1].all())
        for row in mask:
            first = int(row.argmax())
            assert bool((row[first:] == 1).all())


def test_padding_changes_logits_only_at_float_noise(sharp):
    """The measured tolerance behind the exact parity above: same prompt, alone vs left-padded."""
    tok, model = sharp.tokenizer, sharp.model
    prompts = render_prompts(tok, _convs(2), "default")
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    short, long_ = sorted(ids, key=len)
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    width = len(long_)
    batch = torch.tensor([[pad] * (width - len(short)) + short, long_])
    mask = torch.tensor([[0] * (width - len(short)) + [1] * len(short), [1] * width])
    with torch.no_grad():
        alone = model(torch.tensor([short])).logits[0, -1]
        padded = model(batch, attention_mask=mask).logits[0, -1]
    assert torch.allclose(alone, padded, atol=1e-4), float((alone - padded).abs().max())


def test_unconstrained_garbage_is_bounded_and_counted_invalid(tiny, sharp):
    for lm in (tiny, sharp):
        res = generate_batch(lm.model, lm.tokenizer, _convs(3), max_new_tokens=10, batch_size=3,
                             progress=False)
        for r in res:
            assert isinstance(r, GenResult)
            assert r.n_tokens == 10 and r.hit_budget and not r.stopped
            s = score_sample(r.text, schema={"type": "object"}, stopped=r.stopped, n_tokens=r.n_tokens)
            assert not s["valid_lenient"] and not s["schema_valid"] and not s["clean_stop"]
    # The large-weight model emits byte pieces that are not UTF-8 alone: decoded with U+FFFD.
    texts = "".join(r.text for r in generate_batch(sharp.model, sharp.tokenizer, _convs(10),
                                                   max_new_tokens=12, batch_size=10, progress=False))
    assert isinstance(texts, str)


def test_constrained_tiny_model_yields_schema_valid_json(tiny, suite_rows):
    rows = [suite_rows[i] for i in PLAIN_SCHEMA_ROWS] + [suite_rows[DATE_SCHEMA_ROW]]
    convs, schemas = [r.messages for r in rows], [r.schema for r in rows]
    free = generate_batch(tiny.model, tiny.tokenizer, convs, max_new_tokens=24, batch_size=8,
                          progress=False)
    assert not any(score_sample(g.text, schema=s, stopped=g.stopped, n_tokens=g.n_tokens)["valid_lenient"]
                   for g, s in zip(free, schemas)), "a random model should not write JSON unconstrained"
    t0 = time.time()
    res = generate_batch(tiny.model, tiny.tokenizer, convs, max_new_tokens=160, batch_size=8,
                         schemas=schemas, constrained=True, progress=False)
    took = time.time() - t0
    for row, g in zip(rows, res):
        s = score_sample(g.text, schema=row.schema, stopped=g.stopped, n_tokens=g.n_tokens)
        assert g.compile_error is None
        assert g.stopped and s["valid_strict"], (row.id, g.text[-200:])
        if row.id == DATE_SCHEMA_ROW:
            assert s["schema_valid"] or "date" in (s["error"] or ""), s["error"]
        else:
            assert s["schema_valid"], (row.id, s["error"], g.text[-300:])
    # The random model never closes a string on its own: the closing bonus did it.
    assert any(g.forced_close for g in res)
    print(f"constrained tiny: {len(rows)} rows x <=160 tokens in {took:.1f} s")


def test_uncompilable_schema_is_counted_not_fatal(tiny, suite_rows):
    good = suite_rows["sf-003-point"]
    bad_lookbehind = {"type": "string", "pattern": "(?<=a)b"}  # valid JSON Schema, xgrammar says no
    bad_ref = {"$ref": "#/$defs/missing"}
    convs = [good.messages, [{"role": "user", "content": "x"}], [{"role": "user", "content": "y"}]]
    res = generate_batch(tiny.model, tiny.tokenizer, convs, max_new_tokens=40, batch_size=3,
                         schemas=[good.schema, bad_lookbehind, bad_ref], constrained=True, progress=False)
    assert res[0].compile_error is None and json.loads(res[0].text)
    assert "ookbehind" in res[1].compile_error
    assert res[2].compile_error
    # Uncompiled rows ran free (the tiny model then writes newlines up to the budget).
    assert res[1].hit_budget and res[2].hit_budget
    # Same schema again: the failure comes from the cache (no second compile, same message).
    again = generate_batch(tiny.model, tiny.tokenizer, convs[1:2], max_new_tokens=2, batch_size=1,
                           schemas=[bad_lookbehind], constrained=True, progress=False)
    assert again[0].compile_error == res[1].compile_error


def test_run_directory_loads_merged_adapter(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qwenft.base import resolve_base

    rb = resolve_base("tiny-random")
    base = AutoModelForCausalLM.from_pretrained(rb.path)
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False, task_type="CAUSAL_LM"))
    run = tmp_path / "run"
    peft_model.save_pretrained(run / "adapter")
    AutoTokenizer.from_pretrained(rb.path).save_pretrained(run / "adapter")
    (run / "run.json").write_text(json.dumps({"base": rb.record(), "status": "done", "recipe": {}}))
    for target in (run, run / "adapter"):
        lm = load_model_for_eval(str(target))
        assert lm.record["kind"] in ("run", "adapter") and lm.record["merged_in_memory"]
        assert "tiny random-weight" in lm.label and "LoRA adapter" in lm.label
        assert not any("lora" in n for n, _ in lm.model.named_parameters())
        assert lm.model.get_input_embeddings().weight.shape[0] == 151936  # never resized
        ids = torch.tensor([[1, 2, 3, 4]])
        with torch.no_grad():
            diff = (lm.model(ids).logits - tiny.model(ids).logits).abs().max()
        assert diff > 1e-4, "the adapter should change the outputs"


def test_greedy_config_overrides_sampling_defaults(qwen_tokenizer):
    from transformers import GenerationConfig

    cfg = greedy_generation_config(qwen_tokenizer)
    assert isinstance(cfg, GenerationConfig)
    assert cfg.do_sample is False and cfg.top_k is None and cfg.temperature is None


@pytest.mark.slow
def test_constrained_stand_in_three_schemas(stand_in_dir, suite_rows):
    lm = load_model_for_eval(str(stand_in_dir))
    assert "STAND-IN" in lm.label
    rows = [suite_rows[i] for i in ("sf-003-point", "sf-006-rgb_color", "ext-in-023-product")]
    res = generate_batch(lm.model, lm.tokenizer, [r.messages for r in rows], max_new_tokens=64,
                         batch_size=3, schemas=[r.schema for r in rows], constrained=True,
                         progress=False)
    for row, g in zip(rows, res):
        s = score_sample(g.text, schema=row.schema, gold=row.gold, has_gold=row.has_gold,
                         stopped=g.stopped, n_tokens=g.n_tokens)
        assert s["valid_strict"] and s["schema_valid"], (row.id, g.text)
        assert g.stopped and not g.forced_close, (row.id, g.text)  # a real model closes by itself
