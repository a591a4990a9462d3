"""Load any model spec for evaluation, and generate greedily in batches, optionally constrained.

One loader for every kind of target: a Hub id, `stand-in`, `tiny-random*`, a local
checkpoint (plain or merged), a run directory, or an adapter directory. Adapters are
merged into the base IN MEMORY before anything else sees the model, so lm-eval and
qwenft eval run the same weights and lm-eval never resizes embeddings before an
adapter is attached (NOTES "Open issue").

Generation is greedy with LEFT padding and an explicit greedy GenerationConfig, so
the checkpoint's sampling defaults (temperature, top_p, repetition_penalty=1.05 on
Qwen) never leak in. Constrained mode masks logits with xgrammar so the output
matches the row's JSON schema.
"""

from __future__ import annotations

import json
import sys
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .base import HUB_MODEL_ID, STAND_IN, ResolvedBase, resolve_base
from .errors import UserError
from .template import apply_system_policy, render

IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
RUN_FILE = "run.json"
ADAPTER_CONFIG = "adapter_config.json"
MERGE_FILE = "qwenft_merge.json"


# --------------------------------------------------------------------------- loading


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    label: str  # says which base really is underneath (stand-in label included)
    record: dict = field(default_factory=dict)  # everything results.json needs to name the model


def pick_eval_dtype(dtype: str, device: str) -> torch.dtype:
    """'auto' -> fp32 on CPU, bf16 (or fp16) on GPU.

    Measured on this project's 2-core AVX2 CPU (no native bf16 instructions) with the
    stand-in, 8 JSON prompts x 24 new tokens, one thread, CPU time (the machine was
    shared, so wall clock was noise): fp32 4.2 tok/s one-by-one and 6.6 tok/s at batch
    8; bf16 1.5 and 1.3 tok/s. bf16 halves memory (1.26 vs 2.5 GB) but every matmul
    pays for conversion here, so fp32 is 3-5x faster, and exact enough that batch size
    never flips a greedy token. GPUs have bf16 units: there bf16 is the faster choice.
    """
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
             "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
    if dtype != "auto":
        if dtype not in names:
            raise UserError(f"Unknown dtype '{dtype}'; use auto, bf16, fp16 or fp32.")
        return names[dtype]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def greedy_generation_config(tokenizer, model_config=None):
    """Greedy decoding, stated in full so the checkpoint's sampling defaults are overridden."""
    from transformers import GenerationConfig

    eos = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT)]
    eos = [i for i in eos if isinstance(i, int) and i >= 0] or [tokenizer.eos_token_id]
    return GenerationConfig(
        do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
        repetition_penalty=1.0, eos_token_id=eos, pad_token_id=pad_id(tokenizer),
        bos_token_id=getattr(model_config, "bos_token_id", None), use_cache=True)


def pad_id(tokenizer) -> int:
    i = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id:
        return i
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e}); it should be a JSON file written by qwenft.")


def _base_from_record(rec: dict) -> ResolvedBase:
    """Re-resolve the base a run was trained on, never silently swapping it for another base."""
    kind, path, requested = rec.get("kind"), rec.get("path"), rec.get("requested")
    if kind == "tiny" and requested:
        return resolve_base(requested)
    if kind == STAND_IN:
        if path and Path(path).is_dir():
            return resolve_base(path)
        return resolve_base(STAND_IN)
    if path and Path(path).is_dir():
        return resolve_base(path)
    # An adapter trained on the real Hub model is meaningless on the stand-in: no fallback.
    spec = requested or path or HUB_MODEL_ID
    return resolve_base(spec, allow_stand_in=False)


def describe_target(spec: str, allow_stand_in: bool = True) -> dict:
    """What `spec` is, without loading weights: kind, base, adapter dir, run dir.

    kind: 'run' (a training run dir), 'adapter' (a peft adapter dir), 'merged' (a
    checkpoint dir with qwenft_merge.json), or 'base' (anything resolve_base takes).
    """
    p = Path(spec).expanduser()
    if p.is_dir():
        run_dir = None
        adapter = None
        if (p / RUN_FILE).is_file():
            run_dir = p
            if (p / "adapter" / ADAPTER_CONFIG).is_file():
                adapter = p / "adapter"
        elif (p / ADAPTER_CONFIG).is_file():
            adapter = p
            if (p.parent / RUN_FILE).is_file():
                run_dir = p.parent
        elif (p / "adapter" / ADAPTER_CONFIG).is_file():
            adapter = p / "adapter"
        if run_dir is not None:
            run = _read_json(run_dir / RUN_FILE)
            if not run.get("base"):
                raise UserError(f"{run_dir / RUN_FILE} has no 'base' record; it was not written by "
                                f"a finished `qwenft train` setup step.")
            if adapter is None:
                if (run_dir / "merged" / "config.json").is_file():
                    return describe_target(str(run_dir / "merged"), allow_stand_in)
                raise UserError(f"{run_dir} is a run directory without an adapter "
                                f"({run_dir / 'adapter' / ADAPTER_CONFIG} is missing): training has "
                                f"not saved one yet (status: {run.get('status')!r}).")
            return {"kind": "run", "run_dir": run_dir, "adapter": adapter, "run": run,
                    "base": _base_from_record(run["base"])}
        if adapter is not None:
            cfg = _read_json(adapter / ADAPTER_CONFIG)
            name = cfg.get("base_model_name_or_path")
            if not name:
                raise UserError(f"{adapter / ADAPTER_CONFIG} names no base_model_name_or_path; "
                                f"evaluate the run directory instead.")
            return {"kind": "adapter", "adapter": adapter,
                    "base": resolve_base(name, allow_stand_in=allow_stand_in)}
        if (p / "config.json").is_file() and (p / MERGE_FILE).is_file():
            merge = _read_json(p / MERGE_FILE)
            base = None
            if isinstance(merge.get("base"), dict):
                try:
                    base = _base_from_record(merge["base"])
                except UserError:
                    base = None  # the merged model is still evaluable; only the comparison is lost
            return {"kind": "merged", "path": p, "merge": merge, "base": base,
                    "resolved": resolve_base(str(p))}
    return {"kind": "base", "resolved": resolve_base(spec, allow_stand_in=allow_stand_in)}


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = ENDOFTEXT
    return tok


def _load_causal_lm(path: str, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True).to(device)


def _finish(model, tokenizer, device):
    model.eval()
    model.config.use_cache = True
    # Installed as the model's own config so lm-eval's generate() is greedy without the
    # checkpoint's repetition_penalty too (lm-eval only passes do_sample=False).
    model.generation_config = greedy_generation_config(tokenizer, model.config)
    return model


def load_model_for_eval(spec_or_dir: "str | Path | ResolvedBase", *, dtype: str = "auto",
                        device: str | None = None, allow_stand_in: bool = True) -> LoadedModel:
    """Load any target for evaluation; adapters are merged in memory (merge_and_unload)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tdtype = pick_eval_dtype(dtype, device)
    t0 = time.time()
    if isinstance(spec_or_dir, ResolvedBase):  # an already-resolved base (e.g. a run's base)
        desc = {"kind": "base", "resolved": spec_or_dir}
        spec_or_dir = spec_or_dir.requested
    else:
        desc = describe_target(str(spec_or_dir), allow_stand_in=allow_stand_in)
    record = {"spec": str(spec_or_dir), "kind": desc["kind"], "dtype": str(tdtype).replace("torch.", ""),
              "device": device}
    if desc["kind"] in ("run", "adapter"):
        from peft import PeftModel

        base: ResolvedBase = desc["base"]
        adapter: Path = desc["adapter"]
        # The adapter dir carries the tokenizer training used (chat template included).
        tok_src = str(adapter) if (adapter / "tokenizer_config.json").is_file() else base.path
        tokenizer = _load_tokenizer(tok_src)
        model = _load_causal_lm(base.path, tdtype, device)
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        label = f"{base.label} + LoRA adapter {adapter.resolve()} (merged in memory)"
        record.update(base=base.record(), adapter=str(adapter.resolve()), merged_in_memory=True,
                      run_dir=str(desc["run_dir"].resolve()) if desc.get("run_dir") else None)
    elif desc["kind"] == "merged":
        resolved: ResolvedBase = desc["resolved"]
        tokenizer = _load_tokenizer(resolved.path)
        model = _load_causal_lm(resolved.path, tdtype, device)
        under = desc["base"].label if desc["base"] else "unknown base"
        label = f"merged checkpoint {desc['path'].resolve()} (base: {under})"
        record.update(checkpoint=resolved.record(), merge=desc["merge"],
                      base=desc["base"].record() if desc["base"] else None)
    else:
        resolved = desc["resolved"]
        tokenizer = _load_tokenizer(resolved.path)
        model = _load_causal_lm(resolved.path, tdtype, device)
        label = resolved.label
        record.update(base=resolved.record())
    model = _finish(model, tokenizer, device)
    record.update(label=label, load_seconds=round(time.time() - t0, 2))
    return LoadedModel(model=model, tokenizer=tokenizer, label=label, record=record)


def base_of(target: str) -> ResolvedBase | None:
    """The base underneath a run/adapter/merged target (None for a plain base or unknown)."""
    desc = describe_target(target)
    if desc["kind"] in ("run", "adapter", "merged"):
        return desc["base"]
    return None


# --------------------------------------------------------------------------- constrained decoding


class _GrammarCache:
    """One xgrammar compiler per (tokenizer, vocab size); compiled grammars by canonical schema.

    Building TokenizerInfo walks the 151k-token vocabulary (about a second), so it is
    done once per tokenizer; compiling a schema takes ~30 ms and failures are cached too.
    """

    def __init__(self, tokenizer, vocab_size: int):
        import xgrammar as xgr

        stops = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT)]
        stops = [s for s in stops if isinstance(s, int) and s >= 0]
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=stops or None)
        self.compiler = xgr.GrammarCompiler(info, max_threads=2)
        self.vocab_size = vocab_size
        self.grammars: dict[str, object] = {}
        self.errors: dict[str, str] = {}
        self.closing = ClosingTokens(tokenizer, vocab_size)

    def get(self, schema) -> tuple[object | None, str | None]:
        key = canonical_schema(schema)
        if key in self.grammars:
            return self.grammars[key], None
        if key in self.errors:
            return None, self.errors[key]
        try:
            if schema is None:
                g = self.compiler.compile_builtin_json_grammar()
            else:
                # Compact JSON (any_whitespace=False): a weak model cannot loop on
                # whitespace, and answers cost fewer tokens; the model loses its own
                # pretty-printing, which no metric here scores.
                # The schema as written, not the sorted cache key: xgrammar emits properties
                # in schema order, and the prompt shows the model that order.
                g = self.compiler.compile_json_schema(json.dumps(schema, ensure_ascii=False),
                                                      any_whitespace=False, strict_mode=True)
        except Exception as e:  # noqa: BLE001 - any compile failure is reported, not fatal
            msg = f"{type(e).__name__}: {e}".strip()
            self.errors[key] = msg[:500]
            return None, self.errors[key]
        self.grammars[key] = g
        return g, None


_CACHES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_CACHES_BY_ID: dict = {}


def grammar_cache(tokenizer, vocab_size: int) -> _GrammarCache:
    try:
        per_tok = _CACHES.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: keep it for the process
        per_tok = _CACHES_BY_ID.setdefault(id(tokenizer), {})
    if vocab_size not in per_tok:
        per_tok[vocab_size] = _GrammarCache(tokenizer, vocab_size)
    return per_tok[vocab_size]


def canonical_schema(schema) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class ClosingTokens:
    """Token ids that wrap a JSON answer up, read from the byte-level token strings (space = 'Ġ').

    in_string: tokens that start with '"' followed only by closers/commas ('"', '"}',
    '",', '"]}'): they end the string being written. outside: ']'/'}' runs (close a
    container), then ',' runs (move on to the next required key), then '""' (a whole
    empty string value), then '"' (open a key/value string the next step closes).
    """

    def __init__(self, tokenizer, vocab_size: int):
        strs = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))
        self.strs = [t or "" for t in strs]

        def ids(pred):
            return torch.tensor([i for i, t in enumerate(self.strs) if t and pred(t)], dtype=torch.long)

        def only(t, chars):
            return set(t) <= set(chars) and bool(set(t) - {"Ġ"})

        self.in_string = ids(lambda t: t[0] == '"' and set(t[1:]) <= set('"]},Ġ')
                             and t.count('"') == 1)
        self.closers = ids(lambda t: only(t, "]}Ġ"))
        self.commas = ids(lambda t: only(t, ",Ġ"))
        self.empty_strings = ids(lambda t: only(t, '"Ġ') and t.count('"') == 2)
        self.quotes = ids(lambda t: only(t, '"Ġ') and t.count('"') == 1)


@dataclass
class _Lex:
    """Where a row is in its compact JSON: inside a string?, after a backslash?, and the
    number of tokens since the last structural character (the current value's length)."""

    in_string: bool = False
    escaped: bool = False
    run: int = 0


def _advance(lex: _Lex, piece: str) -> _Lex:
    """Move the lexer over one token's byte-level text (multi-byte characters hold no ASCII)."""
    in_string, escaped, structural = lex.in_string, lex.escaped, False
    for ch in piece:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string, structural = False, True
        elif ch == '"':
            in_string, structural = True, True
        elif ch in "{}[],:":
            structural = True
    return _Lex(in_string, escaped, 0 if structural else lex.run + 1)


# One JSON value (a string or a number) longer than this is a runaway: about 150-200
# characters, far above any value the shipped suites expect (names, cities, dates).
# Raising it lets genuinely long string fields through, at the cost of letting a
# looping model eat more of the budget before it is wrapped up.
DEFAULT_MAX_VALUE_TOKENS = 48


def default_close_reserve(max_new_tokens: int) -> int:
    """Tokens kept at the end of the budget for closing the JSON (see RowGrammarProcessor).

    A third of the budget, at most 64: enough to close an object with several
    required keys still missing; with the default 256-token budget, closing starts
    at token 192, past any real answer to the shipped suites (40-120 tokens).
    """
    return max(1, min(64, max_new_tokens // 3))


class RowGrammarProcessor:
    """Per-row grammar masks for HF generate; a None grammar leaves its row unconstrained.

    xgrammar's own contrib.hf.LogitsProcessor does take one compiled grammar per batch
    row, but it cannot leave a row free (a schema that failed to compile) and asserts on
    every accepted token; this is the same loop with those two cases handled. One
    instance per generate() call: matchers hold the rows' state.

    Wrap-up: a grammar only keeps the output a prefix of a valid document; a model
    that never closes a string or keeps adding digits (a random model does, a looping
    fine-tune can) is still cut by max_new_tokens and invalid. So grammar-allowed
    tokens that wrap the answer up (ClosingTokens; a small lexer tracks whether the
    row is inside a string) get a large bonus for a row
      - from step `close_after` on (the end of the budget), and
      - while its current value has run `max_value_tokens` tokens without a
        structural character (a runaway string or number).
    Best effort, not a guarantee: a string whose format forbids closing yet (an email
    still missing its '@') can still run out. Trade-off: such a row is valid JSON
    whose last value is cut short; it is marked (GenResult.forced_close) so reports
    count it. None turns either trigger off.
    """

    def __init__(self, grammars: list, vocab_size: int, *, close_after: int | None = None,
                 max_value_tokens: int | None = None, closing: ClosingTokens | None = None):
        import xgrammar as xgr

        self.xgr = xgr
        self.matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in grammars]
        self.bitmask = xgr.allocate_token_bitmask(len(grammars), vocab_size)
        self.step = 0
        self.rejected = [False] * len(grammars)
        self.forced = [False] * len(grammars)
        self.close_after = close_after if closing is not None else None
        self.max_value_tokens = max_value_tokens if closing is not None else None
        self.closing = closing
        self.lex = [_Lex() for _ in grammars]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != len(self.matchers):
            raise RuntimeError("batch size changed during constrained generation")
        if self.step > 0:
            for i, m in enumerate(self.matchers):
                if m is not None and not m.is_terminated() and not self.rejected[i]:
                    tok = int(input_ids[i, -1])
                    if not m.accept_token(tok):
                        # Cannot happen with a mask applied; if it does, free the row rather
                        # than crash the eval, and let the metrics see what came out.
                        self.rejected[i] = True
                    elif self.closing is not None and tok < len(self.closing.strs):
                        self.lex[i] = _advance(self.lex[i], self.closing.strs[tok])
        active = []
        for i, m in enumerate(self.matchers):
            if m is None or m.is_terminated() or self.rejected[i]:
                continue  # finished rows are overwritten with pad by generate anyway
            m.fill_next_token_bitmask(self.bitmask, i)
            active.append(i)
        if active:
            dev = scores.device
            s = scores if dev.type in ("cpu", "cuda") else scores.to("cpu")
            self.xgr.apply_token_bitmask_inplace(s, self.bitmask.to(s.device), indices=active)
            for i in active:
                if self._wrap_up(i):
                    self._boost(s, i)
            scores = s if s is scores else s.to(dev)
        self.step += 1
        return scores

    def _wrap_up(self, i: int) -> bool:
        if self.closing is None:
            return False
        late = self.close_after is not None and self.step >= self.close_after
        runaway = self.max_value_tokens is not None and self.lex[i].run >= self.max_value_tokens
        return late or runaway

    def _boost(self, s: torch.Tensor, i: int) -> None:
        """-inf (masked) stays -inf; allowed wrap-up tokens outrank all others, in tiers."""
        c = self.closing
        self.forced[i] = True
        if self.lex[i].in_string:
            s[i, c.in_string.to(s.device)] += 3e4
        else:
            s[i, c.closers.to(s.device)] += 3e4
            s[i, c.commas.to(s.device)] += 2e4
            s[i, c.empty_strings.to(s.device)] += 1.5e4
            s[i, c.quotes.to(s.device)] += 1e4


# --------------------------------------------------------------------------- generation


@dataclass
class GenResult:
    text: str  # decoded new tokens, without the stop token
    n_tokens: int  # new tokens generated, the stop token included
    stopped: bool  # emitted <|im_end|> / <|endoftext|> within the budget
    hit_budget: bool  # ran out of max_new_tokens without stopping
    seconds: float  # this row's share of its batch's wall time (rows of a batch share evenly)
    compile_error: str | None = None  # constrained mode: the schema did not compile; row ran free
    forced_close: bool = False  # constrained mode: the row reached the closing reserve
    prompt: str = ""


def render_prompts(tokenizer, conversations: list[list[dict]], system_policy: str) -> list[str]:
    out = []
    for conv in conversations:
        msgs = list(conv)
        # An eval row may carry its gold answer as the last turn; the model must write it.
        if msgs and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]
        out.append(render(tokenizer, apply_system_policy(msgs, system_policy), add_generation_prompt=True))
    return out


def _left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if s:
            ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s):] = 1
    return ids, mask


def _split_row(tokenizer, new: list[int], eos: set[int], max_new_tokens: int) -> tuple[str, int, bool, bool]:
    stop_at = next((k for k, t in enumerate(new) if t in eos), None)
    if stop_at is None:
        body, n, stopped = new, len(new), False
    else:
        body, n, stopped = new[:stop_at], stop_at + 1, True
    # Byte-level BPE pieces that are not valid UTF-8 on their own decode with U+FFFD,
    # so garbage output becomes invalid JSON, never an exception.
    text = tokenizer.decode(body, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return text, n, stopped, (not stopped and n >= max_new_tokens)


def generate_batch(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int,
                   batch_size: int, system_policy: str = "default", schemas: list[dict] | None = None,
                   constrained: bool = False, progress: bool = True, desc: str = "generate",
                   close_reserve: int | None = None,
                   max_value_tokens: int | None = DEFAULT_MAX_VALUE_TOKENS) -> list[GenResult]:
    """Greedy answers for each conversation, in input order.

    Rows are sorted by prompt length (longest first) so each batch pads little and a
    too-large batch fails at once; batch_size trades memory for throughput.
    Constrained mode: close_reserve tokens at the end of the budget are kept for
    closing the JSON (None: default_close_reserve(max_new_tokens); 0: off), and one
    value may run at most max_value_tokens tokens (None: unlimited); see
    RowGrammarProcessor.
    """
    from tqdm.auto import tqdm

    if constrained and schemas is not None and len(schemas) != len(conversations):
        raise ValueError("schemas must have one entry per conversation")
    if max_new_tokens < 1 or batch_size < 1:
        raise UserError("max_new_tokens and batch_size must be at least 1.")
    prompts = render_prompts(tokenizer, conversations, system_policy)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    gen_cfg = greedy_generation_config(tokenizer, model.config)
    gen_cfg.max_new_tokens = max_new_tokens
    eos = set(gen_cfg.eos_token_id)
    pad = gen_cfg.pad_token_id
    device = next(model.parameters()).device
    cache = grammar_cache(tokenizer, model.config.vocab_size) if constrained else None
    if close_reserve is None:
        close_reserve = default_close_reserve(max_new_tokens)
    close_after = max(0, max_new_tokens - close_reserve) if close_reserve > 0 else None

    order = sorted(range(len(prompts)), key=lambda i: (-len(ids[i]), i))
    results: list[GenResult | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, unit="row", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        input_ids, attn = _left_pad([ids[i] for i in chunk], pad)
        processors, errors = [], [None] * len(chunk)
        # One grammar matcher per row, so a batch mixes schemas freely: no grouping rows
        # by schema and no falling back to batch size 1 in constrained mode.
        if constrained:
            grammars = []
            for j, i in enumerate(chunk):
                g, err = cache.get(schemas[i] if schemas is not None else None)
                grammars.append(g)
                errors[j] = err
            if any(g is not None for g in grammars):
                processors.append(RowGrammarProcessor(grammars, model.config.vocab_size,
                                                      close_after=close_after,
                                                      max_value_tokens=max_value_tokens,
                                                      closing=cache.closing))
        t0 = time.time()
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attn.to(device),
                                 generation_config=gen_cfg, logits_processor=processors or None)
        share = (time.time() - t0) / len(chunk)
        new_all = out[:, input_ids.shape[1]:].tolist()
        forced = processors[0].forced if processors else [False] * len(chunk)
        for j, i in enumerate(chunk):
            text, n, stopped, hit = _split_row(tokenizer, new_all[j], eos, max_new_tokens)
            results[i] = GenResult(text=text, n_tokens=n, stopped=stopped, hit_budget=hit,
                                   seconds=share, compile_error=errors[j], prompt=prompts[i],
                                   forced_close=forced[j])
        bar.update(len(chunk))
    bar.close()
    return results  # type: ignore[return-value]
