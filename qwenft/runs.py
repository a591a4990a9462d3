"""Run directories and atomic writes: nothing half-written is ever taken for complete."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

COMPLETE_MARKER = "qwenft_complete.json"


def write_json_atomic(path: Path, data, indent: int = 2) -> None:
    write_text_atomic(Path(path), json.dumps(data, indent=indent, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move a fully written temp dir into place; the old dest goes only after."""
    dest = Path(dest)
    if dest.exists():
        trash = dest.parent / f".{dest.name}.old-{os.getpid()}"
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(dest, trash)
        os.replace(tmp, dest)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def temp_dir_beside(dest: Path) -> Path:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    return tmp


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def checkpoint_step(p: Path) -> int:
    try:
        return int(p.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def complete_checkpoints(ckpt_root: Path, warn=print) -> list[Path]:
    """Checkpoints that finished writing (marker present), oldest first; warns about the rest."""
    out = []
    if not Path(ckpt_root).is_dir():
        return out
    for p in sorted(Path(ckpt_root).glob("checkpoint-*"), key=checkpoint_step):
        if (p / COMPLETE_MARKER).is_file():
            out.append(p)
        else:
            warn(f"WARNING: skipping {p}: it has no {COMPLETE_MARKER} (half-written, e.g. killed "
                 f"during save); it will not be loaded")
    return out


def latest_run(output_dir: Path = Path("outputs")) -> Path | None:
    runs = [p.parent for p in Path(output_dir).glob("*/run.json")]
    if not runs:
        return None
    return max(runs, key=lambda p: (p / "run.json").stat().st_mtime)
