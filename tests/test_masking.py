"""What the model learns from, token by token, with the REAL Qwen2.5 tokenizer and template.

The expected ids and labels are built independently of qwenft.template: each ChatML turn
`<|im_start|>{role}\\n{body}<|im_end|>\\n` is tokenized piece by piece (head, body +
<|im_end|>, newline) and only assistant bodies + their <|im_end|> are labelled. The `\\n`
after `<|im_start|>assistant` and the `\\n` after `<|im_end|>` are NOT trained (TRL's
assistant_only_loss trains both; see NOTES.md).
"""

from __future__ import annotations

import json

import pytest

from qwenft.config import MaskingConfig
from qwenft.data import Row
from qwenft.errors import UserError
from qwenft.masking import audit, enforce, tokenize_rows
from qwenft.template import (IGNORE_INDEX, QWEN_DEFAULT_SYSTEM, Example, TemplateError,
                             apply_system_policy, assistant_spans, export_chat_template, render,
                             show_trained, template_hash, tokenize_example)

IM_END = "<|im_end|>"
ML = 4096


def enc(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def chatml(tok, turns):
    """Expected (ids, labels) for turns [(role, body, trained)], tokenized piece by piece."""
    ids, labels = [], []
    for role, body, trained in turns:
        head = enc(tok, f"<|im_start|>{role}\n")
        body_ids = enc(tok, body + IM_END)
        nl = enc(tok, "\n")
        ids += head + body_ids + nl
        labels += [IGNORE_INDEX] * len(head)
        labels += body_ids if trained else [IGNORE_INDEX] * len(body_ids)
        labels += [IGNORE_INDEX] * len(nl)
    return ids, labels


def trained_runs(tok, ex: Example) -> list[str]:
    """The decoded text of each contiguous run of trained tokens."""
    runs, cur = [], []
    for tid, lab in zip(ex.input_ids, ex.labels):
        if lab != IGNORE_INDEX:
            cur.append(tid)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tok.decode(r) for r in runs]


def check_alignment(tok, ex: Example) -> None:
    """Labels align with input_ids; each run starts right after `assistant\\n` and is followed by `\\n`."""
    assert len(ex.labels) == len(ex.input_ids)
    nl = enc(tok, "\n")[0]
    for i, (tid, lab) in enumerate(zip(ex.input_ids, ex.labels)):
        assert lab in (IGNORE_INDEX, tid)
        starts = lab != IGNORE_INDEX and (i == 0 or ex.labels[i - 1] == IGNORE_INDEX)
        if starts:
            assert ex.input_ids[i - 1] == nl  # the `\n` of `<|im_start|>assistant\n`, untrained
            assert tok.decode(ex.input_ids[i - 2]) == "assistant"
        ends = lab != IGNORE_INDEX and (i + 1 == len(ex.labels) or ex.labels[i + 1] == IGNORE_INDEX)
        if ends and i + 1 < len(ex.input_ids):
            assert ex.input_ids[i + 1] == nl  # the `\n` after <|im_end|>, untrained
    assert ex.n_trained == sum(1 for x in ex.labels if x != IGNORE_INDEX)


U1, A1 = "What is the capital of France?", "The capital of France is Paris."
U2, A2 = "And of Japan? Answer as JSON.", '{"country": "Japan", "capital": "Tokyo"}'
U3, A3 = "Thanks! One word: the largest ocean?", "Pacific"


def multi():
    return [{"role": "user", "content": U1}, {"role": "assistant", "content": A1},
            {"role": "user", "content": U2}, {"role": "assistant", "content": A2},
            {"role": "user", "content": U3}, {"role": "assistant", "content": A3}]


# --------------------------------------------------------------------------- single / multi turn


def test_single_turn_default_system_exact_labels(qwen_tokenizer):
    tok = qwen_tokenizer
    msgs = [{"role": "user", "content": U1}, {"role": "assistant", "content": A1}]
    ex = tokenize_example(tok, apply_system_policy(msgs, "default"), max_length=ML)
    ids, labels = chatml(tok, [("system", QWEN_DEFAULT_SYSTEM, False), ("user", U1, False),
                               ("assistant", A1, True)])
    assert ex.input_ids == ids
    assert ex.labels == labels
    assert trained_runs(tok, ex) == [A1 + IM_END]
    assert ex.n_turns == 1 and ex.n_truncated_turns == 0 and ex.im_end_ok
    check_alignment(tok, ex)
    # The default system prompt is in the input (the template inserts it) and never trained.
    assert QWEN_DEFAULT_SYSTEM in ex.text
    assert QWEN_DEFAULT_SYSTEM not in "".join(trained_runs(tok, ex))


def test_multi_turn_all_assistant_turns_trained(qwen_tokenizer):
    tok = qwen_tokenizer
    ex = tokenize_example(tok, multi(), max_length=ML)
    ids, labels = chatml(tok, [("system", QWEN_DEFAULT_SYSTEM, False), ("user", U1, False),
                               ("assistant", A1, True), ("user", U2, False), ("assistant", A2, True),
                               ("user", U3, False), ("assistant", A3, True)])
    assert ex.input_ids == ids and ex.labels == labels
    assert trained_runs(tok, ex) == [A1 + IM_END, A2 + IM_END, A3 + IM_END]
    assert ex.n_turns == 3
    check_alignment(tok, ex)


def test_multi_turn_last_assistant_only(qwen_tokenizer):
    tok = qwen_tokenizer
    ex = tokenize_example(tok, multi(), max_length=ML, train_on="last_assistant")
    ids, labels = chatml(tok, [("system", QWEN_DEFAULT_SYSTEM, False), ("user", U1, False),
                               ("assistant", A1, False), ("user", U2, False), ("assistant", A2, False),
                               ("user", U3, False), ("assistant", A3, True)])
    assert ex.input_ids == ids and ex.labels == labels
    assert trained_runs(tok, ex) == [A3 + IM_END]
    assert ex.n_turns == 1
    check_alignment(tok, ex)


# --------------------------------------------------------------------------- system prompt policy


def test_explicit_system_prompt_is_kept_and_not_trained(qwen_tokenizer):
    tok = qwen_tokenizer
    sys_text = "You answer in one short sentence."
    msgs = [{"role": "system", "content": sys_text}, {"role": "user", "content": U1},
            {"role": "assistant", "content": A1}]
    for policy in ("default", "none", "Some other policy text."):
        # A row's own system message is data: every policy keeps it.
        assert apply_system_policy(msgs, policy) == msgs
    ex = tokenize_example(tok, apply_system_policy(msgs, "none"), max_length=ML)
    ids, labels = chatml(tok, [("system", sys_text, False), ("user", U1, False), ("assistant", A1, True)])
    assert ex.input_ids == ids and ex.labels == labels
    assert QWEN_DEFAULT_SYSTEM not in ex.text


def test_system_policy_none_renders_an_empty_system_turn(qwen_tokenizer):
    tok = qwen_tokenizer
    msgs = [{"role": "user", "content": U1}, {"role": "assistant", "content": A1}]
    ex = tokenize_example(tok, apply_system_policy(msgs, "none"), max_length=ML)
    ids, labels = chatml(tok, [("system", "", False), ("user", U1, False), ("assistant", A1, True)])
    assert ex.input_ids == ids and ex.labels == labels
    assert ex.text.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\n")
    assert QWEN_DEFAULT_SYSTEM not in ex.text


def test_system_policy_custom_text(qwen_tokenizer):
    tok = qwen_tokenizer
    custom = "You extract JSON. Reply with JSON only."
    msgs = [{"role": "user", "content": U2}, {"role": "assistant", "content": A2}]
    ex = tokenize_example(tok, apply_system_policy(msgs, custom), max_length=ML)
    ids, labels = chatml(tok, [("system", custom, False), ("user", U2, False), ("assistant", A2, True)])
    assert ex.input_ids == ids and ex.labels == labels
    assert trained_runs(tok, ex) == [A2 + IM_END]


def test_tokenize_rows_applies_the_policy_and_records_the_row(qwen_tokenizer):
    rows = [Row([{"role": "user", "content": U1}, {"role": "assistant", "content": A1}], None, "f.jsonl", 7)]
    [ex] = tokenize_rows(qwen_tokenizer, rows, max_length=ML, train_on="all_assistant", system_policy="none")
    assert ex.meta == {"source": "f.jsonl", "line": 7}
    assert ex.text.startswith("<|im_start|>system\n<|im_end|>")
    assert rows[0].messages[0]["role"] == "user"  # the row itself is not modified


# --------------------------------------------------------------------------- tools


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL_BODY = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TOOL_RESULT = '{"temp_c": 21, "sky": "clear"}'
FINAL = "It is 21 °C and clear in Paris."


def tool_conversation(arguments):
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": TOOL_RESULT},
        {"role": "assistant", "content": FINAL},
    ]


def test_tool_calls_trained_tool_results_not(qwen_tokenizer):
    tok = qwen_tokenizer
    # OpenAI-style JSON-string arguments are normalised to an object.
    ex = tokenize_example(tok, tool_conversation('{"city": "Paris"}'), max_length=ML)
    ids, labels = chatml(tok, [
        ("system", QWEN_DEFAULT_SYSTEM, False), ("user", "Weather in Paris?", False),
        ("assistant", CALL_BODY, True),
        ("user", f"<tool_response>\n{TOOL_RESULT}\n</tool_response>", False),
        ("assistant", FINAL, True)])
    assert ex.input_ids == ids and ex.labels == labels
    assert trained_runs(tok, ex) == [CALL_BODY + IM_END, FINAL + IM_END]
    assert ex.n_turns == 2 and ex.im_end_ok
    check_alignment(tok, ex)
    # Object arguments give exactly the same tokens.
    ex2 = tokenize_example(tok, tool_conversation({"city": "Paris"}), max_length=ML)
    assert ex2.input_ids == ex.input_ids and ex2.labels == ex.labels
    assert TOOL_RESULT not in "".join(trained_runs(tok, ex))


def test_tool_call_with_content_trains_both(qwen_tokenizer):
    tok = qwen_tokenizer
    msgs = tool_conversation({"city": "Paris"})
    msgs[1]["content"] = "Let me check."
    ex = tokenize_example(tok, msgs, max_length=ML)
    assert trained_runs(tok, ex) == ["Let me check.\n" + CALL_BODY + IM_END, FINAL + IM_END]
    check_alignment(tok, ex)


def test_tools_list_is_passed_to_the_template_and_not_trained(qwen_tokenizer):
    tok = qwen_tokenizer
    ex = tokenize_example(tok, tool_conversation('{"city": "Paris"}'), [WEATHER_TOOL], max_length=ML)
    assert "<tools>\n" + json.dumps(WEATHER_TOOL) + "\n</tools>" in ex.text
    assert QWEN_DEFAULT_SYSTEM in ex.text  # the tools system turn keeps the default prompt
    assert trained_runs(tok, ex) == [CALL_BODY + IM_END, FINAL + IM_END]
    check_alignment(tok, ex)
    # The system turn (with the tools) is one untrained block before the first user turn.
    first_user = ex.text.index("<|im_start|>user")
    n_sys = len(enc(tok, ex.text[:first_user]))
    assert all(lab == IGNORE_INDEX for lab in ex.labels[:n_sys])
    # Through tokenize_rows (Row.tools) the same.
    [ex3] = tokenize_rows(tok, [Row(tool_conversation('{"city": "Paris"}'), [WEATHER_TOOL], "t", 1)],
                          max_length=ML, train_on="all_assistant", system_policy="default")
    assert ex3.input_ids == ex.input_ids and ex3.labels == ex.labels


# --------------------------------------------------------------------------- truncation


def test_truncation_inside_the_second_assistant_turn(qwen_tokenizer):
    tok = qwen_tokenizer
    full = tokenize_example(tok, multi(), max_length=ML)
    trained = [i for i, lab in enumerate(full.labels) if lab != IGNORE_INDEX]
    # Positions of the second turn's trained tokens: after the first run ends.
    first_end = next(i for i in trained if full.labels[i + 1] == IGNORE_INDEX)
    second = [i for i in trained if i > first_end][:len(enc(tok, A2 + IM_END))]
    cut = second[3]  # keep 3 tokens of A2
    ex = tokenize_example(tok, multi(), max_length=cut)
    assert ex.input_ids == full.input_ids[:cut]
    assert ex.labels == full.labels[:cut]  # cut consistently with the ids
    assert ex.n_turns == 3 and ex.n_truncated_turns == 2  # turn 2 cut, turn 3 cut away entirely
    assert ex.im_end_ok  # the one complete turn still trains its <|im_end|>
    runs = trained_runs(tok, ex)
    assert runs[0] == A1 + IM_END and A2.startswith(runs[1]) and runs[1] != A2
    assert ex.n_trained == len(enc(tok, A1 + IM_END)) + 3


def test_truncation_right_after_im_end_is_not_a_cut_turn(qwen_tokenizer):
    tok = qwen_tokenizer
    msgs = [{"role": "user", "content": U1}, {"role": "assistant", "content": A1}]
    full = tokenize_example(tok, msgs, max_length=ML)
    last = max(i for i, lab in enumerate(full.labels) if lab != IGNORE_INDEX)
    ex = tokenize_example(tok, msgs, max_length=last + 1)  # drops only the final `\n`
    assert ex.n_truncated_turns == 0 and ex.im_end_ok
    assert trained_runs(tok, ex) == [A1 + IM_END]
    ex = tokenize_example(tok, msgs, max_length=last)  # drops <|im_end|> too
    assert ex.n_truncated_turns == 1
    assert ex.im_end_ok  # no complete turn, so nothing to check
    assert trained_runs(tok, ex) == [A1]


def test_prompt_longer_than_max_length_gives_an_empty_example(qwen_tokenizer):
    ex = tokenize_example(qwen_tokenizer, multi(), max_length=16)
    assert len(ex.input_ids) == 16 and ex.n_trained == 0
    assert ex.n_truncated_turns == 3 and ex.n_turns == 3


# --------------------------------------------------------------------------- audit


def _rows():
    long_prompt = "Read this carefully. " * 30
    return [
        Row([{"role": "user", "content": U1}, {"role": "assistant", "content": A1}], None, "a.jsonl", 1),
        Row(multi(), None, "a.jsonl", 2),
        Row([{"role": "user", "content": long_prompt}, {"role": "assistant", "content": A2}], None, "b.jsonl", 5),
    ]


def test_audit_numbers_on_a_known_set(qwen_tokenizer):
    tok = qwen_tokenizer
    rows = _rows()
    max_length = 100  # rows 1-2 fit; row 3's prompt alone is longer
    exs = tokenize_rows(tok, rows, max_length=max_length, train_on="all_assistant", system_policy="none")
    # Independent counts: piecewise token lengths.
    full = [chatml(tok, [("system", "", False), ("user", U1, False), ("assistant", A1, True)]),
            chatml(tok, [("system", "", False), ("user", U1, False), ("assistant", A1, True),
                         ("user", U2, False), ("assistant", A2, True), ("user", U3, False),
                         ("assistant", A3, True)])]
    assert all(len(ids) <= max_length for ids, _ in full)
    trained = sum(sum(1 for x in labels if x != IGNORE_INDEX) for _, labels in full)
    tokens = sum(len(ids) for ids, _ in full) + max_length
    a = audit(exs, MaskingConfig(max_empty_examples=0.5, max_truncated_turns=0.5))
    assert a.examples == 3 and a.tokens == tokens and a.trained_tokens == trained
    assert a.trained_fraction == pytest.approx(trained / tokens)
    assert a.empty_examples == 1 and a.empty_fraction == pytest.approx(1 / 3)
    assert a.assistant_turns == 5 and a.truncated_turns == 1 and a.truncated_fraction == pytest.approx(0.2)
    assert a.im_end_all_trained and a.im_end_missing_examples == 0
    assert a.failures == []
    enforce(a)  # passes
    assert set(a.to_dict()) >= {"trained_fraction", "empty_examples", "truncated_turns", "failures"}


@pytest.mark.parametrize("cfg,key,fix", [
    (MaskingConfig(min_trained_fraction=0.9, max_empty_examples=1, max_truncated_turns=1),
     "masking.min_trained_fraction", "lower masking.min_trained_fraction"),
    (MaskingConfig(max_empty_examples=0.0, max_truncated_turns=1), "masking.max_empty_examples",
     "raise data.max_length"),
    (MaskingConfig(max_empty_examples=1, max_truncated_turns=0.1), "masking.max_truncated_turns",
     "raise data.max_length"),
])
def test_each_threshold_fails_with_its_key_and_fix(qwen_tokenizer, cfg, key, fix):
    exs = tokenize_rows(qwen_tokenizer, _rows(), max_length=100, train_on="all_assistant", system_policy="none")
    a = audit(exs, cfg)
    assert len(a.failures) == 1 and key in a.failures[0]
    with pytest.raises(UserError) as e:
        enforce(a)
    msg = str(e.value)
    assert key in msg and fix in msg and "before training" in msg
    if key == "masking.max_empty_examples":
        assert "b.jsonl:5" in msg  # names the example


def test_require_im_end_fails_for_a_template_that_ends_turns_otherwise(qwen_tokenizer, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    old = "message.content + '<|im_end|>' + '\\n'"
    assert old in tok.chat_template
    tok.chat_template = tok.chat_template.replace(old, "message.content + '<|endoftext|>' + '\\n'")
    exs = tokenize_rows(tok, _rows()[:2], max_length=ML, train_on="all_assistant", system_policy="none")
    assert not any(e.im_end_ok for e in exs)
    a = audit(exs, MaskingConfig())
    assert a.im_end_missing_examples == 2 and not a.im_end_all_trained
    with pytest.raises(UserError, match="masking.require_im_end"):
        enforce(a)
    assert audit(exs, MaskingConfig(require_im_end=False)).failures == []


def test_a_row_the_template_cannot_render_names_the_row(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = "{{ raise_exception('this template refuses') }}"
    with pytest.raises(UserError, match=r"b\.jsonl:5: the chat template cannot render this row"):
        tokenize_rows(tok, _rows()[2:], max_length=ML, train_on="all_assistant", system_policy="none")
    # A template that is not prefix-stable (it renders the turns in reverse) is refused.
    tok.chat_template = ("{% for m in messages|reverse %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                         "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(TemplateError, match="prefix"):
        assistant_spans(tok, multi())
    with pytest.raises(UserError, match=r"a\.jsonl:2: .*not prefix-stable"):
        tokenize_rows(tok, _rows()[1:2], max_length=ML, train_on="all_assistant", system_policy="none")


# --------------------------------------------------------------------------- helpers around the template


def test_show_trained_marks_exactly_the_trained_text(qwen_tokenizer):
    tok = qwen_tokenizer
    ex = tokenize_example(tok, [{"role": "user", "content": "Say hi in Japanese."},
                                {"role": "assistant", "content": "こんにちは 👋"}], max_length=ML)
    shown = show_trained(tok, ex)
    assert shown.count("[[") == 1 and "<|im_start|>assistant\n[[こんにちは 👋<|im_end|>]]\n" in shown
    assert shown.replace("[[", "").replace("]]", "") == ex.text


def test_export_chat_template_matches_the_training_policy(qwen_tokenizer, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = tok.chat_template
    user = [{"role": "user", "content": "hi"}]
    assert export_chat_template(base, "default", QWEN_DEFAULT_SYSTEM) == base
    for policy, expected in [("none", ""), ('Be "terse", it\'s a C:\\path\nsecond line', None)]:
        tok.chat_template = export_chat_template(base, policy, QWEN_DEFAULT_SYSTEM)
        want = expected if expected is not None else policy
        # What the exported checkpoint renders without a system message == what training rendered.
        assert render(tok, user) == f"<|im_start|>system\n{want}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        tok_train = qwen_tokenizer
        assert render(tok, user) == render(tok_train, apply_system_policy(user, policy))
        assert render(tok, user, tools=[WEATHER_TOOL]).startswith(f"<|im_start|>system\n{want}\n\n# Tools")
    assert template_hash(qwen_tokenizer) == template_hash(qwen_tokenizer) and len(template_hash(qwen_tokenizer)) == 64
