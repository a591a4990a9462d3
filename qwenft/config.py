"""Recipes: YAML in, typed dataclasses out, strict validation before any model or data loads.

A recipe may `extends:` another file (paths relative to the recipe); the child
overrides the parent key by key, lists are replaced whole. Command-line overrides
`section.key=value` are parsed as YAML scalars, so they are typed like the file.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import UserError, did_you_mean


def opt(default=dataclasses.MISSING, doc: str = "", *, factory=None, min=None, max=None,
        choices=None):
    """A dataclass field with a one-line doc and optional range/choice checks."""
    meta = {"doc": doc, "min": min, "max": max, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    base_model: str = opt("Qwen/Qwen2.5-0.5B-Instruct",
                          "Hub id, local checkpoint dir, 'stand-in', or 'tiny-random[-untied]' (tests)")
    allow_stand_in: bool = opt(False, "When the Hub id cannot be had offline, fall back to the stand-in (loudly, recorded)")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = opt("bf16", "Dtype of the frozen base weights and compute (fp32 is safest on CPU)")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = opt("sdpa", "Attention kernel passed to transformers")
    trust_remote_code: bool = opt(False, "Run code shipped with the checkpoint; off unless you trust the source")
    revision: str | None = opt(None, "Hub revision (branch, tag or commit) of base_model")


@dataclass
class LoraConfig:
    r: int = opt(16, "LoRA rank", min=1, max=4096)
    alpha: float = opt(32, "LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rsLoRA)", min=0)
    dropout: float = opt(0.05, "Dropout on the LoRA input", min=0.0, max=1.0)
    target_modules: Union[str, list[str]] = opt("all-linear", "'all-linear' or a list of module names (q_proj, v_proj, ...)")
    use_dora: bool = opt(False, "Weight-decomposed LoRA (DoRA): better quality, ~2x slower steps")
    use_rslora: bool = opt(False, "Rank-stabilised scaling alpha / sqrt(r)")
    modules_to_save: list[str] = opt(doc="Modules trained in full and saved with the adapter (e.g. lm_head)", factory=list)
    bias: Literal["none", "all", "lora_only"] = opt("none", "Which biases are trained")


@dataclass
class QuantizationConfig:
    load_in_4bit: bool = opt(False, "QLoRA: load the frozen base in 4-bit through bitsandbytes")
    quant_type: Literal["nf4", "fp4"] = opt("nf4", "4-bit data type")
    double_quant: bool = opt(True, "Quantise the quantisation constants too (saves ~0.4 bit/param)")
    compute_dtype: Literal["bf16", "fp16", "fp32"] = opt("bf16", "Dtype the 4-bit weights are dequantised to for matmuls")
    prepare_kbit: bool = opt(True, "peft's prepare_model_for_kbit_training: fp32 norms, input grads (costs memory)")


@dataclass
class DataSource:
    path: str = opt(doc="Local .jsonl/.json/.parquet/.csv file (relative to the recipe) or a Hub dataset id")
    format: Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion"] = opt("auto", "Row format; auto detects it from the keys")
    weight: float = opt(1.0, "Share in the mix: rows taken = round(weight * rows); >1 repeats rows, <1 subsamples by seed", min=0.0)
    split: str = opt("train", "Split of a Hub dataset")
    subset: str | None = opt(None, "Config name of a Hub dataset")
    column: str | None = opt(None, "Column holding the conversation when it is not the format's default")


@dataclass
class DataConfig:
    sources: list[DataSource] = opt(doc="Training data sources, mixed by weight", factory=list)
    validation_fraction: float = opt(0.0, "Share of the training rows held out for validation (ignored when validation_sources is set)", min=0.0, max=0.5)
    validation_sources: list[DataSource] = opt(doc="Separate validation files", factory=list)
    on_bad_row: Literal["error", "skip"] = opt("error", "error: stop with the list of bad rows; skip: drop them and report each")
    system_prompt: str = opt("default", "'default' keeps the template's own system prompt, 'none' renders none, other text is used as the system prompt")
    max_length: int = opt(1024, "Tokens per example; longer examples are cut (counted in the mask audit)", min=16)
    shuffle: bool = opt(True, "Shuffle the mixed rows with the recipe seed")


@dataclass
class MaskingConfig:
    train_on: Literal["all_assistant", "last_assistant"] = opt("all_assistant", "Which assistant turns carry loss")
    min_trained_fraction: float = opt(0.01, "Fail before training when fewer of all tokens are trained", min=0.0, max=1.0)
    max_empty_examples: float = opt(0.0, "Largest allowed share of examples with no trained token", min=0.0, max=1.0)
    max_truncated_turns: float = opt(0.05, "Largest allowed share of assistant turns cut by max_length", min=0.0, max=1.0)
    require_im_end: bool = opt(True, "Fail unless every complete assistant turn trains its closing end-of-turn token")


@dataclass
class TrainingConfig:
    epochs: float = opt(1.0, "Passes over the training data (ignored when max_steps > 0)", min=0.0)
    max_steps: int = opt(-1, "Optimizer steps; -1 = from epochs", min=-1)
    batch_size: int = opt(4, "Examples per device per micro-batch (rows when packing)", min=1)
    gradient_accumulation_steps: int = opt(1, "Micro-batches per optimizer step", min=1)
    learning_rate: float = opt(2e-4, "Peak learning rate", min=0.0, max=1.0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = opt("cosine", "Learning-rate schedule")
    warmup_ratio: float = opt(0.03, "Share of steps spent warming up", min=0.0, max=1.0)
    weight_decay: float = opt(0.0, "AdamW weight decay", min=0.0)
    max_grad_norm: float = opt(1.0, "Gradient clipping norm", min=0.0)
    optim: str = opt("adamw_torch", "transformers optimizer name")
    gradient_checkpointing: bool = opt(False, "Recompute activations in backward: ~30% slower, much less memory")
    packing: bool = opt(True, "Padding-free batches: a micro-batch's examples are concatenated into one row with restarting position ids (no padding, no attention across examples, same examples per step)")
    loss_impl: Literal["auto", "native", "trl"] = opt("auto", "native: output head + PyTorch cross-entropy only at trained positions (fast on CPU, holds their logits); trl: TRL's tiled fused head (least memory, Triton on GPU); auto: native on CPU, trl on GPU")
    logging_steps: int = opt(1, "Log every N steps", min=1)
    save_steps: int = opt(100, "Checkpoint every N steps", min=1)
    save_total_limit: int = opt(2, "Checkpoints kept on disk", min=1)
    eval_steps: int | None = opt(None, "Validation loss every N steps (None: at the end only)", min=1)
    resume: str = opt("auto", "auto: continue from the last complete checkpoint; false: start fresh; or a checkpoint path")
    report_to: Literal["none", "wandb"] = opt("none", "Experiment tracker besides the local metrics.jsonl")
    wandb_project: str = opt("qwenft", "wandb project (offline mode when no API key is set)")
    use_cpu: bool = opt(False, "Train on CPU even when a GPU is present")
    seed: int | None = opt(None, "Training seed (defaults to the recipe seed)")


@dataclass
class EvalConfig:
    suites: list[str] = opt(doc="JSON suites: shipped names (json_extraction, schema_following) or .jsonl paths", factory=list)
    lm_eval_tasks: list[str] = opt(doc="lm-eval task names (shipped ones live in eval/tasks/)", factory=list)
    modes: list[Literal["unconstrained", "constrained"]] = opt(doc="Decoding modes for the JSON suites", factory=lambda: ["unconstrained", "constrained"])
    max_new_tokens: int = opt(256, "Token budget per answer", min=1)
    batch_size: int = opt(16, "Generation batch size (left padding); larger = more tokens/s, more memory (KV cache)", min=1)
    limit: int | None = opt(None, "Evaluate only the first N rows of each suite/task", min=1)
    slices: list[str] = opt(doc="Only these suite slices (empty: all)", factory=list)
    compare_base: bool = opt(True, "Also evaluate the base model and report deltas")
    gates: dict[str, float] = opt(doc="Minimum scores, e.g. json_extraction.held_out.field_f1: 0.5; push refuses below them", factory=dict)


@dataclass
class MergeConfig:
    enabled: bool = opt(True, "Merge the adapter into the base after training")
    dtype: Literal["bf16", "fp16", "fp32"] = opt("bf16", "Dtype of the exported checkpoint")
    max_shard_size: str = opt("2GB", "Largest safetensors shard")
    parity_threshold: float = opt(0.05, "Largest allowed max |logit difference| merged vs base+adapter (in the export dtype)", min=0.0)
    qlora_merge_onto: Literal["original", "quantized"] = opt("original", "QLoRA: merge onto the original weights or the 4-bit round-tripped ones")


@dataclass
class PushConfig:
    repo_id: str | None = opt(None, "Hub repo ORG/NAME to push the merged checkpoint to (None: no push)")
    private: bool = opt(True, "Create the repo private")
    revision: str | None = opt(None, "Branch to push to")
    force: bool = opt(False, "Push even when evaluation gates fail")


@dataclass
class Recipe:
    run_name: str = opt("run", "Name of the run; its directory is output_dir/run_name")
    output_dir: str = opt("outputs", "Where run directories go (relative to the working directory)")
    seed: int = opt(42, "Seed for data shuffling, splits, LoRA init and training")
    model: ModelConfig = opt(doc="Base model", factory=ModelConfig)
    lora: LoraConfig = opt(doc="LoRA adapter", factory=LoraConfig)
    quantization: QuantizationConfig = opt(doc="QLoRA 4-bit loading", factory=QuantizationConfig)
    data: DataConfig = opt(doc="Training and validation data", factory=DataConfig)
    masking: MaskingConfig = opt(doc="What the model learns from, and the audit thresholds", factory=MaskingConfig)
    training: TrainingConfig = opt(doc="Optimisation and checkpoints", factory=TrainingConfig)
    eval: EvalConfig = opt(doc="Evaluation after training and for `qwenft eval`", factory=EvalConfig)
    merge: MergeConfig = opt(doc="Export of a standalone checkpoint", factory=MergeConfig)
    push: PushConfig = opt(doc="Push the merged checkpoint to the Hub", factory=PushConfig)

    # Where the recipe came from (not a YAML key): used to resolve relative paths.
    source_path: str | None = field(default=None, metadata={"internal": True})

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source_path", None)
        return d


# --------------------------------------------------------------------------- parsing


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        inner = typing.get_args(tp)[0]
        if dataclasses.is_dataclass(inner):
            return f"a list of mappings ({inner.__name__})"
        return f"a list of {_type_name(inner)}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false",
            type(None): "null"}.get(tp, str(tp))


class _Errors:
    def __init__(self, source: str):
        self.source = source
        self.items: list[str] = []

    def add(self, key: str, msg: str):
        self.items.append(f"{key}: {msg}")

    def raise_if_any(self):
        if self.items:
            shown = "; ".join(self.items[:20])
            more = f" (and {len(self.items) - 20} more)" if len(self.items) > 20 else ""
            raise UserError(f"Invalid recipe {self.source}: {shown}{more}.")


def _convert(value: Any, tp, key: str, errs: _Errors, meta: dict | None = None):
    origin = typing.get_origin(tp)
    meta = meta or {}
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            sub = _Errors(errs.source)
            out = _convert(value, a, key, sub, meta)
            if not sub.items:
                return out
        errs.add(key, f"got {value!r}, expected {_type_name(tp)}")
        return None
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            errs.add(key, f"got {value!r}, allowed: {', '.join(map(str, allowed))}.{did_you_mean(value, allowed)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            errs.add(key, f"got {value!r}, expected {_type_name(tp)}{_path_hint(value, typing.get_args(tp)[0], True)}")
            return []
        (inner,) = typing.get_args(tp)
        return [_convert(v, inner, f"{key}[{i}]", errs) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errs.add(key, f"got {value!r}, expected a mapping")
            return {}
        _, vt = typing.get_args(tp)
        return {str(k): _convert(v, vt, f"{key}.{k}", errs) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if value is None and _all_defaults(tp):
            value = {}  # `lora:` with nothing under it: the section's defaults
        if not isinstance(value, dict):
            errs.add(key, f"got {value!r}, expected a mapping of {tp.__name__} keys{_path_hint(value, tp, False)}")
            return tp() if _all_defaults(tp) else None
        return _build(tp, value, key, errs)
    # scalars
    ok = True
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif tp is str:
        if isinstance(value, bool):
            # YAML turns `resume: false` into a bool; keep the string meaning.
            value = "false" if value is False else "true"
        ok = isinstance(value, (str, int, float))
        if ok:
            value = str(value)
    if not ok:
        if value is None:
            hint = "; for no system prompt write: none" if key.endswith("system_prompt") else ""
            errs.add(key, f"got an empty value (null), expected {_type_name(tp)}{hint}")
        else:
            errs.add(key, f"got {value!r} ({type(value).__name__}), expected {_type_name(tp)}")
        return value
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(value, float) and not math.isfinite(value):
        errs.add(key, f"got {value}, expected a finite number{_range_text(lo, hi)}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            errs.add(key, f"{value} is out of range; allowed{_range_text(lo, hi)}")
    return value


def _range_text(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" {lo} <= value <= {hi}"
    if lo is not None:
        return f" value >= {lo}"
    if hi is not None:
        return f" value <= {hi}"
    return ""


def _path_hint(value, tp, as_list: bool) -> str:
    """A bare file name where a data source belongs: show the shape that is wanted."""
    if isinstance(value, str) and dataclasses.is_dataclass(tp) and "path" in {f.name for f in dataclasses.fields(tp)}:
        item = f"{{path: {value}}}"
        return f"; write [{item}]" if as_list else f"; write {item}"
    return ""


def _all_defaults(cls) -> bool:
    return all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(cls))


def _public_fields(cls):
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def _build(cls, data: dict, prefix: str, errs: _Errors):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in _public_fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            errs.add(key, f"unknown key.{did_you_mean(k, fields)} Allowed here: {', '.join(fields)}")
            continue
        kwargs[k] = _convert(v, hints[k], key, errs, dict(fields[k].metadata))
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            errs.add(f"{prefix}.{name}" if prefix else name, "is required")
    try:
        return cls(**kwargs)
    except TypeError:
        return None


def _deep_merge(parent: dict, child: dict) -> dict:
    out = dict(parent)
    for k, v in child.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float (YAML 1.2, what people write) and refuses
    duplicate keys (PyYAML silently keeps the last one)."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _construct_mapping_no_dupes(loader, node, deep=False):
    # Check the keys written in this mapping (before `<<: *anchor` merges, which may be overridden).
    seen = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            continue  # the base constructor reports unhashable keys
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"key '{key}' appears twice (first at line {seen[key] + 1}); keep one",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_no_dupes)


def yaml_load(text: str):
    """Parse YAML like every qwenft recipe and override is parsed."""
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: Path) -> dict:
    if not path.exists():
        raise UserError(f"Recipe file {path} does not exist. Check the path (recipes live in "
                        f"recipes/ and configs/).")
    if path.is_dir():
        raise UserError(f"Recipe path {path} is a directory; give a .yaml file inside it.")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"Cannot read recipe {path}: {e.strerror or e}. Check the file's permissions.") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"Recipe {path} is not UTF-8 text ({e.reason}: byte 0x{raw[e.start]:02x} at line "
                        f"{line}); save it as UTF-8.") from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"Recipe {path} is not valid YAML{where}: {problem}. Fix the syntax there "
                        f"(indent with spaces, 'key: value', quote values containing ': ' or '#').") from None
    if data is None:
        raise UserError(f"Recipe {path} is empty. A recipe is a YAML mapping of sections, at least "
                        f"`data: {{sources: [{{path: train.jsonl}}]}}`, or `extends: <another recipe>` "
                        f"(see configs/sft.yaml).")
    if not isinstance(data, dict):
        raise UserError(f"Recipe {path} must be a YAML mapping of sections (run_name:, model:, data:, "
                        f"training:, ...), got a {type(data).__name__} at the top level.")
    return data


def _load_chain(path: Path, seen: tuple = ()) -> dict:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in seen + (path,))
        raise UserError(f"Recipe {seen[-1]}: extends makes a cycle ({chain}); remove the `extends:` "
                        f"that points back.")
    data = read_yaml(path)
    parent = data.pop("extends", None)
    base_dir = path.parent
    _absolutise_paths(data, base_dir)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent.strip():
        raise UserError(f"Recipe {path}: extends must be one path string (relative to the recipe "
                        f"file), got {parent!r}.")
    ppath = base_dir / Path(parent).expanduser()
    if not ppath.exists():
        raise UserError(f"Recipe {path}: extends: {parent} -> {ppath} does not exist; fix the "
                        f"path (relative to the recipe file).")
    return _deep_merge(_load_chain(ppath, seen + (path,)), data)


DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
# Names that are surely meant as files (so a missing one is reported as a missing file, and an
# unsupported one as such, instead of being tried as a Hub dataset id).
FILE_LIKE_SUFFIXES = DATA_SUFFIXES + (".txt", ".tsv", ".gz", ".zip", ".xlsx", ".xls", ".arrow",
                                      ".yaml", ".yml", ".md", ".jsonl.gz")


def looks_like_file(p: str) -> bool:
    return (Path(p).is_absolute() or p.startswith((".", "~"))
            or Path(p).suffix.lower() in FILE_LIKE_SUFFIXES)


def _resolve_data_path(p: str, base_dir: Path) -> str:
    """A file path is relative to the recipe; anything else that is not a file is a Hub id."""
    if Path(p).is_absolute() or not p.strip():
        return p
    cand = base_dir / Path(p).expanduser()
    if cand.exists() or looks_like_file(p):
        return str(cand.resolve())
    return p


def _absolutise_paths(data: dict, base_dir: Path) -> None:
    """Data and suite paths in a recipe are relative to that recipe file."""
    d = data.get("data")
    if isinstance(d, dict):
        for key in ("sources", "validation_sources"):
            for src in d.get(key) or []:
                if isinstance(src, dict) and isinstance(src.get("path"), str):
                    src["path"] = _resolve_data_path(src["path"], base_dir)
    e = data.get("eval")
    if isinstance(e, dict) and isinstance(e.get("suites"), list):
        out = []
        for s in e["suites"]:
            if isinstance(s, str) and s.endswith((".jsonl", ".json")) and not Path(s).is_absolute():
                out.append(str(base_dir / s))
            else:
                out.append(s)
        e["suites"] = out


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise UserError(f"Override '{text}' is not of the form section.key=value (e.g. training.max_steps=10).")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"Override '{text}' has an empty key; write section.key=value.")
    text = raw.strip()
    try:
        value = yaml_load(raw) if text else ""
    except yaml.YAMLError:
        value = text
    # Plain text stays text: `data.system_prompt=You are: terse` is not a mapping, and
    # `run_name=exp #2` keeps its '#'. Quotes, [lists] and {mappings} are parsed as YAML.
    if isinstance(value, str) and text[:1] not in ("'", '"'):
        value = text
    elif isinstance(value, dict) and not text.startswith("{"):
        value = text
    elif isinstance(value, list) and not text.startswith("["):
        value = text
    return key.split("."), value


_INDEXED = re.compile(r"^(\w+)\[(\d+)\]$")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` overrides (a list item: `data.sources[0].weight=0.5`)."""
    import copy

    data = copy.deepcopy(data)
    for ov in overrides:
        parts, value = parse_override(ov)
        cur = data
        for depth, p in enumerate(parts):
            last = depth == len(parts) - 1
            m = _INDEXED.match(p)
            name, index = (m.group(1), int(m.group(2))) if m else (p, None)
            if index is not None:
                lst = cur.get(name)
                if not isinstance(lst, list) or index >= len(lst):
                    n = len(lst) if isinstance(lst, list) else 0
                    raise UserError(f"Override '{ov}': {'.'.join(parts[:depth] + [name])} has {n} "
                                    f"item(s), so [{index}] does not exist; indices start at 0.")
                if last:
                    lst[index] = value
                    break
                if not isinstance(lst[index], dict):
                    raise UserError(f"Override '{ov}': {'.'.join(parts[:depth + 1])} is not a section.")
                cur = lst[index]
                continue
            if last:
                cur[name] = value
                break
            nxt = cur.get(name)
            if nxt is None:
                nxt = cur[name] = {}
            if not isinstance(nxt, dict):
                raise UserError(f"Override '{ov}': '{'.'.join(parts[:depth + 1])}' is a value "
                                f"({nxt!r}), not a section; write {'.'.join(parts[:depth + 1])}=VALUE.")
            cur = nxt
    return data


def recipe_from_dict(data: dict, source: str = "<dict>") -> Recipe:
    errs = _Errors(source)
    recipe = _build(Recipe, data, "", errs)
    errs.raise_if_any()
    _check_semantics(recipe, errs)
    errs.raise_if_any()
    recipe.source_path = source
    return recipe


def _check_semantics(r: Recipe, errs: _Errors) -> None:
    t = r.training
    if t.resume not in ("auto", "false", "true") and not Path(t.resume).exists():
        errs.add("training.resume", f"'{t.resume}' is neither auto/false nor an existing checkpoint path")
    if r.quantization.load_in_4bit and r.model.dtype == "fp16" and r.quantization.compute_dtype == "bf16":
        errs.add("quantization.compute_dtype", "bf16 compute with fp16 weights mixes dtypes; use fp16 or set model.dtype: bf16")
    if not r.run_name or "/" in r.run_name or r.run_name.startswith("."):
        errs.add("run_name", f"'{r.run_name}' must be a plain directory name (no '/', not starting with '.')")
    for name in ("sources", "validation_sources"):
        for i, s in enumerate(getattr(r.data, name)):
            if s is not None and not str(s.path).strip():
                errs.add(f"data.{name}[{i}].path", "is empty; give a .jsonl/.json/.parquet/.csv file "
                                                   "(relative to the recipe) or a Hub dataset id")
    if t.max_steps <= 0 and t.epochs == 0:
        errs.add("training.epochs", "is 0 and training.max_steps is not set, so nothing would be "
                                    "trained; set epochs > 0 or max_steps > 0")
    if isinstance(r.lora.target_modules, list) and not r.lora.target_modules:
        errs.add("lora.target_modules", "is an empty list; use 'all-linear' or name modules "
                                        "(q_proj, k_proj, v_proj, o_proj, ...)")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe (following `extends:`), apply overrides, validate everything."""
    path = Path(path)
    data = _load_chain(path)
    data = apply_overrides(data, overrides or [])
    return recipe_from_dict(data, str(path))


def describe(cls=Recipe, prefix: str = "") -> list[str]:
    """One line per key with its type, default and doc (for `qwenft validate --keys`)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in _public_fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(f"{key}:  {f.metadata.get('doc', '')}")
            lines += describe(tp, key + ".")
        else:
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
            lines.append(f"{key} ({_type_name(tp)}, default {default!r}): {f.metadata.get('doc', '')}")
    return lines
