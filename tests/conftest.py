"""Shared fixtures: tiny random-weight Qwen2 models with the real Qwen tokenizer, the stand-in.

Everything is built by qwenft itself (qwenft.base) and cached under the per-user
cache (QWENFT_CACHE), so a second test run reuses it.
"""

import os
from pathlib import Path

import pytest

# Tests never touch the Hub: a stray Hub load would cost ~49 s of retries offline.
# Tests of offline detection and fallback remove this with monkeypatch.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def stand_in_dir() -> Path:
    """The real stand-in base (prepared on first use, then cached)."""
    from qwenft.base import resolve_stand_in_path

    return resolve_stand_in_path()


@pytest.fixture(scope="session")
def tiny_model_dir(stand_in_dir) -> Path:
    """Tiny random Qwen2 (2 layers, hidden 64), tied embeddings like the Hub model."""
    from qwenft.base import prepare_tiny

    return prepare_tiny(tied=True)


@pytest.fixture(scope="session")
def tiny_untied_dir(stand_in_dir) -> Path:
    """Tiny random Qwen2 with untied embeddings, like the stand-in."""
    from qwenft.base import prepare_tiny

    return prepare_tiny(tied=False)


@pytest.fixture(scope="session")
def qwen_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)
