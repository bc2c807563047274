"""JSONL I/O that never leaves a half-written file and never accepts a malformed one.

* `write_jsonl` writes to a temporary file in the same folder and renames it: readers
  see the old file or the new one, never a torn one.
* `append_jsonl` appends whole lines with fsync, so an interrupted generation keeps
  every finished row; `read_jsonl(..., tolerate_torn_tail=True)` drops a torn last line
  left by a kill mid-write (and `repair_torn_tail` removes it on disk) so resume neither
  duplicates nor loses rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from .errors import CaiError


def read_jsonl(path, required: Sequence[str] = (), tolerate_torn_tail: bool = False,
               line_numbers: list[int] | None = None) -> list[dict]:
    """Read a JSONL file; every line must be a JSON object holding `required` keys.

    line_numbers: a list that receives each returned row's 1-based line number (for error
    messages that point into the file)."""
    path = Path(path)
    if not path.exists():
        raise CaiError(f"{path}: file not found — check the path (or run the stage that writes it)")
    if path.is_dir():
        raise CaiError(f"{path}: is a folder — pass the JSONL file inside it")
    rows: list[dict] = []
    try:
        with open(path, "r", encoding="utf-8") as fh:
            lines = fh.read().split("\n")
    except UnicodeDecodeError:
        raise CaiError(f"{path}: not UTF-8 text — pass a JSONL file (one JSON object per line)") from None
    # A file ending in "\n" yields a final empty string; anything else in the last slot
    # is a torn line from an interrupted append.
    last = len(lines) - 1
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == last and tolerate_torn_tail:
                break
            raise CaiError(f"{path}:{i + 1}: not valid JSON ({exc.msg}) — fix or remove that line") from None
        if not isinstance(obj, dict):
            raise CaiError(f"{path}:{i + 1}: expected a JSON object per line, got {type(obj).__name__}")
        missing = [k for k in required if k not in obj]
        if missing:
            raise CaiError(f"{path}:{i + 1}: missing field {missing[0]!r} — every record needs {list(required)}")
        rows.append(obj)
        if line_numbers is not None:
            line_numbers.append(i + 1)
    return rows


def write_text(path, text: str) -> Path:
    """Atomically replace `path` with `text`: write a temp file in the same folder, fsync,
    rename. Readers see the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_jsonl(path, rows: Iterable[dict]) -> Path:
    """Atomically replace `path` with `rows` (one JSON object per line)."""
    return write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_json(path, obj) -> Path:
    """Atomically replace `path` with pretty JSON."""
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise CaiError(f"{path}: file not found — check the path (or run the stage that writes it)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CaiError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}) — fix or regenerate it") from None


def repair_torn_tail(path) -> int:
    """Cut a trailing partial line (left by a kill mid-append). Returns bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, "rb") as fh:  # the common case (clean tail) reads one byte, not the file
        if fh.seek(0, os.SEEK_END) == 0:
            return 0
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return 0
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as fh:
        fh.truncate(keep)
    return len(data) - keep


def append_jsonl(path, rows: Iterable[dict]) -> None:
    """Append whole lines and fsync, so finished rows survive an interruption."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_torn_tail(path)
    with open(path, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
