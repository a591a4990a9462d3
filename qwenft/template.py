"""The chat template: rendering, the system-prompt policy, and what the model learns from.

Trained spans are computed from the rendered template itself, for any template
the tokenizer carries: for each assistant message i, the text rendered for
messages[:i] with the generation prompt is a prefix of the conversation, and the
text rendered for messages[:i+1] ends where that turn ends. The span between
them (less trailing whitespace the template puts after the end-of-turn token)
is the assistant's content plus its end-of-turn token. Token offsets map spans
to labels. No marker strings are matched.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import json
from dataclasses import dataclass, field

from .errors import UserError

IGNORE_INDEX = -100


def apply_system_policy(messages: list[dict], policy: str) -> list[dict]:
    """One policy for training, evaluation and export.

    - 'default': rows without a system message get the template's own default.
    - 'none': rows without a system message get an empty one (the Qwen template
      always writes a system turn; an empty one is the closest to none).
    - any other text: rows without a system message get that text.
    A row's own system message always wins: it is data.
    """
    if messages and messages[0].get("role") == "system":
        return messages
    if policy == "default":
        return messages
    text = "" if policy == "none" else policy
    return [{"role": "system", "content": text}] + list(messages)


def export_chat_template(template: str, policy: str, default_system: str | None) -> str:
    """The template a merged checkpoint ships, so its default matches the training policy."""
    if policy == "default" or not default_system or default_system not in template:
        return template
    text = "" if policy == "none" else policy
    # The default sits in single- and double-quoted Jinja string literals: escape for both.
    esc = text.replace("\\", "\\\\").replace("'", "\\'").replace('"', '\\"').replace("\n", "\\n")
    return template.replace(default_system, esc)


QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def normalise_tool_calls(messages: list[dict]) -> list[dict]:
    """OpenAI tool calls carry JSON-string arguments; the Qwen template wants objects."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            m = copy.deepcopy(m)
            for tc in m["tool_calls"]:
                fn = tc.get("function", tc)
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        fn["arguments"] = json.loads(args)
                    except ValueError:
                        pass
            if m.get("content") is None:
                m["content"] = ""
        out.append(m)
    return out


def render(tokenizer, messages: list[dict], tools=None, add_generation_prompt: bool = False) -> str:
    kwargs = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    if tools:
        kwargs["tools"] = tools
    return tokenizer.apply_chat_template(messages, **kwargs)


def end_of_turn_id(tokenizer) -> int | None:
    """The id of the token that closes a turn: <|im_end|> for ChatML templates, else eos."""
    tid = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
        return tid
    return tokenizer.eos_token_id


def template_hash(tokenizer) -> str:
    return hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()


@dataclass
class Example:
    """One conversation, tokenized, with labels and what the audit needs."""

    input_ids: list[int]
    labels: list[int]
    text: str
    spans: list[tuple[int, int]]  # character spans that carry loss
    n_turns: int = 0  # assistant turns that should carry loss
    n_truncated_turns: int = 0  # of those, cut by max_length
    im_end_ok: bool = True  # every complete trained turn ends with its end-of-turn token trained
    n_trained: int = 0
    meta: dict = field(default_factory=dict)


class TemplateError(UserError):
    pass


def assistant_spans(tokenizer, messages: list[dict], tools=None, train_on: str = "all_assistant"):
    full = render(tokenizer, messages, tools)
    idx = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if train_on == "last_assistant":
        idx = idx[-1:]
    spans = []
    for i in idx:
        before = render(tokenizer, messages[:i], tools, add_generation_prompt=True)
        through = render(tokenizer, messages[: i + 1], tools)
        if not (full.startswith(before) and full.startswith(through) and len(through) >= len(before)):
            raise TemplateError(
                "The chat template is not prefix-stable: rendering the conversation up to assistant "
                f"turn {i} is not a prefix of the whole conversation, so trained spans cannot be "
                "computed from it. Use a template that renders turns left to right (the Qwen2.5 "
                "template does).")
        end = len(through.rstrip())
        spans.append((len(before), end))
    return full, spans


def tokenize_example(tokenizer, messages: list[dict], tools=None, *, max_length: int,
                     train_on: str = "all_assistant") -> Example:
    messages = normalise_tool_calls(messages)
    full, spans = assistant_spans(tokenizer, messages, tools, train_on)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    span_last_token = []
    starts = [s for s, _ in offsets]
    ordered = all(x <= y for x, y in zip(starts, starts[1:]))
    for a, b in spans:
        last = None
        # A token belongs to a span when it starts inside it.
        cand = (range(bisect.bisect_left(starts, a), bisect.bisect_left(starts, b)) if ordered
                else [t for t, s in enumerate(starts) if a <= s < b])
        for t in cand:
            labels[t] = ids[t]
            last = t
        span_last_token.append(last)
    cut_chars = offsets[max_length - 1][1] if len(ids) > max_length else len(full)
    n_trunc = sum(1 for a, b in spans if b > cut_chars)
    eot = end_of_turn_id(tokenizer)
    im_end_ok = all(
        last is not None and ids[last] == eot
        for (a, b), last in zip(spans, span_last_token) if b <= cut_chars)
    ids, labels = ids[:max_length], labels[:max_length]
    return Example(ids, labels, full, spans, n_turns=len(spans), n_truncated_turns=n_trunc,
                   im_end_ok=im_end_ok, n_trained=sum(1 for x in labels if x != IGNORE_INDEX))


def show_trained(tokenizer, ex: Example, open_mark: str = "[[", close_mark: str = "]]") -> str:
    """The rendered example with trained tokens wrapped in markers, for `qwenft validate`."""
    # Decode runs of tokens together so characters split over several tokens stay whole.
    out, run, inside = [], [], False
    for tid, lab in zip(ex.input_ids, ex.labels):
        trained = lab != IGNORE_INDEX
        if trained != inside and run:
            out.append(tokenizer.decode(run))
            run = []
        if trained and not inside:
            out.append(open_mark)
        if not trained and inside:
            out.append(close_mark)
        inside = trained
        run.append(tid)
    if run:
        out.append(tokenizer.decode(run))
    if inside:
        out.append(close_mark)
    return "".join(out)
