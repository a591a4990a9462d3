"""Tokenize validated rows with their labels, and audit what the model will learn from."""

from __future__ import annotations

from dataclasses import dataclass

from .config import MaskingConfig
from .data import Row
from .errors import UserError
from .template import Example, apply_system_policy, tokenize_example


def tokenize_rows(tokenizer, rows: list[Row], *, max_length: int, train_on: str,
                  system_policy: str) -> list[Example]:
    from jinja2 import TemplateError as JinjaError

    out = []
    for r in rows:
        msgs = apply_system_policy(r.messages, system_policy)
        try:
            ex = tokenize_example(tokenizer, msgs, r.tools, max_length=max_length, train_on=train_on)
        except UserError as e:
            raise UserError(f"{r.source}:{r.line}: {e}") from None
        except (JinjaError, ValueError, TypeError, KeyError) as e:
            raise UserError(f"{r.source}:{r.line}: the chat template cannot render this row "
                            f"({type(e).__name__}: {e}). Fix the row (roles, content, tool_calls, "
                            f"tools) or remove it.") from None
        ex.meta = {"source": r.source, "line": r.line}
        out.append(ex)
    return out


@dataclass
class MaskAudit:
    examples: int
    tokens: int
    trained_tokens: int
    trained_fraction: float
    empty_examples: int
    empty_fraction: float
    assistant_turns: int
    truncated_turns: int
    truncated_fraction: float
    im_end_all_trained: bool
    im_end_missing_examples: int
    failures: list[str]

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def audit(examples: list[Example], cfg: MaskingConfig) -> MaskAudit:
    tokens = sum(len(e.input_ids) for e in examples)
    trained = sum(e.n_trained for e in examples)
    empty = sum(1 for e in examples if e.n_trained == 0)
    turns = sum(e.n_turns for e in examples)
    trunc = sum(e.n_truncated_turns for e in examples)
    missing = [e for e in examples if not e.im_end_ok]
    n = max(len(examples), 1)
    a = MaskAudit(
        examples=len(examples), tokens=tokens, trained_tokens=trained,
        trained_fraction=trained / max(tokens, 1), empty_examples=empty, empty_fraction=empty / n,
        assistant_turns=turns, truncated_turns=trunc, truncated_fraction=trunc / max(turns, 1),
        im_end_all_trained=not missing, im_end_missing_examples=len(missing), failures=[])
    if a.trained_fraction < cfg.min_trained_fraction:
        a.failures.append(f"only {a.trained_fraction:.2%} of tokens are trained, below "
                          f"masking.min_trained_fraction={cfg.min_trained_fraction}; the answers are tiny "
                          f"next to the prompts or cut off: check the data and data.max_length, or lower "
                          f"masking.min_trained_fraction")
    if a.empty_fraction > cfg.max_empty_examples:
        where = [_where(e) for e in examples if e.n_trained == 0][:5]
        a.failures.append(f"{empty} of {a.examples} example(s) ({a.empty_fraction:.1%}) have no trained "
                          f"token, e.g. {', '.join(where)}, above masking.max_empty_examples="
                          f"{cfg.max_empty_examples}; raise data.max_length or shorten the prompts")
    if a.truncated_fraction > cfg.max_truncated_turns:
        where = [_where(e) for e in examples if e.n_truncated_turns][:5]
        a.failures.append(f"{trunc} of {turns} assistant turns ({a.truncated_fraction:.1%}) are cut by "
                          f"data.max_length, e.g. {', '.join(where)}, above masking.max_truncated_turns="
                          f"{cfg.max_truncated_turns}; raise data.max_length or shorten those rows")
    if cfg.require_im_end and missing:
        where = [_where(e) for e in missing[:5]]
        a.failures.append(f"{len(missing)} example(s) do not train the end-of-turn token of every complete "
                          f"assistant turn, e.g. {', '.join(where)} (masking.require_im_end: true); the "
                          f"model would not learn to stop: use a chat template whose assistant turns end "
                          f"with <|im_end|>, or set masking.require_im_end: false if that is intended")
    return a


def _where(e: Example) -> str:
    return f"{e.meta.get('source')}:{e.meta.get('line')}"


def enforce(a: MaskAudit) -> None:
    if a.failures:
        raise UserError("The mask audit failed before training: " + "; ".join(a.failures) + ".")
