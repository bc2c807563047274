"""JSONL I/O that never leaves a half-written file and never accepts a malformed one.

* `write_jsonl` writes to a temporary file in the same folder and renames it: readers
  see the old file or the new one, never a torn one. A failed write (full disk, a folder
  in the way) removes the temporary file and raises one CaiError naming the target.
* `append_jsonl` appends whole lines with fsync, so an interrupted generation keeps
  every finished row; `read_jsonl(..., tolerate_torn_tail=True)` drops a torn last line
  left by a kill mid-write (and `repair_torn_tail` removes it on disk) so resume neither
  duplicates nor loses rows. An append that fails with an OSError (a full disk) cuts the
  file back to where it started, so the batch is all or nothing.
* Every unreadable input (not UTF-8, nesting too deep, a number too long, an unpaired
  surrogate, a folder) is one CaiError naming the file and line.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from .errors import CaiError

# A JSON string escape of a UTF-16 surrogate. Only lines holding one need the (slower)
# check for an unpaired surrogate, which parses but cannot be written back as UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _what_failed(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def _read_bytes(path: Path) -> bytes:
    """The file's bytes; a missing file, a folder or an OS refusal is one CaiError."""
    try:
        if not path.exists():
            raise CaiError(f"{path}: file not found — check the path (or run the stage that writes it)")
        if path.is_dir():
            raise CaiError(f"{path}: is a folder — pass the file inside it")
        return path.read_bytes()
    except OSError as exc:  # permission denied, name too long, a device error
        raise CaiError(f"{path}: cannot read ({_what_failed(exc)}) — check the path and its permissions") from None


def _decode(path: Path, data: bytes, tolerate_torn_tail: bool = False) -> str:
    """UTF-8 text (a leading byte-order mark is allowed); else a CaiError naming the line.

    With tolerate_torn_tail, bad bytes in an unterminated last line are a kill mid-append
    that cut a multi-byte character in two: that line is dropped like any torn line.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        tail_start = data.rfind(b"\n") + 1
        if tolerate_torn_tail and exc.start >= tail_start:
            return _decode(path, data[:tail_start])
        line = data.count(b"\n", 0, exc.start) + 1
        raise CaiError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}) — "
                       f"re-save the file as UTF-8") from None


def _loads(text: str, where: str):
    """json.loads with every way it can fail on bad input turned into one CaiError.

    JSONDecodeError is re-raised as is (the caller decides whether a torn last line is
    tolerated); the others can never come from a torn line.
    """
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise CaiError(f"{where}: JSON nested too deeply to read — flatten the structure "
                       f"(a few levels are all any record needs)") from None
    except ValueError as exc:  # Python's limit on digits in an integer (sys.set_int_max_str_digits)
        limit = getattr(sys, "get_int_max_str_digits", lambda: None)()
        why = f"more than {limit} digits, Python's limit" if limit and "digits" in str(exc) else str(exc)
        raise CaiError(f"{where}: a number in it is too long to read ({why}) — "
                       f"store such a value as a string") from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise CaiError(f"{where}: a string holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff) "
                           f"— it is not valid Unicode text; fix or remove that value") from None
    return obj


def read_jsonl(path, required: Sequence[str] = (), tolerate_torn_tail: bool = False,
               line_numbers: list[int] | None = None) -> list[dict]:
    """Read a JSONL file; every line must be a JSON object holding `required` keys.

    line_numbers: a list that receives each returned row's 1-based line number (for error
    messages that point into the file)."""
    path = Path(path)
    lines = _decode(path, _read_bytes(path), tolerate_torn_tail).split("\n")
    rows: list[dict] = []
    # A file ending in "\n" yields a final empty string; anything else in the last slot
    # is a torn line from an interrupted append.
    last = len(lines) - 1
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = _loads(line, f"{path}:{i + 1}")
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


def _write_refusal(path: Path, exc: BaseException) -> CaiError:
    """One line naming the file that could not be written and what to do about it."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return CaiError(f"{path}: cannot write (no space left on device) — free space on that disk "
                        f"or write somewhere else; nothing was written")
    if isinstance(exc, UnicodeEncodeError):
        return CaiError(f"{path}: cannot write — the data holds an unpaired UTF-16 surrogate "
                        f"({exc.object[exc.start:exc.end]!r}), which is not valid Unicode text")
    what = _what_failed(exc) if isinstance(exc, OSError) else str(exc)
    return CaiError(f"{path}: cannot write ({what}) — choose a writable file path; nothing was written")


def _check_target(path: Path) -> None:
    """Refuse a target that os.replace would wrongly replace: a folder, or a device or
    pipe (renaming over /dev/full as root would replace the device node itself)."""
    try:
        if path.is_dir():
            raise CaiError(f"{path}: is a folder — pass a file path to write to (e.g. {path / 'out.jsonl'})")
        if path.exists() and not path.is_file():
            raise CaiError(f"{path}: is not a regular file (a device or pipe) — pass a file path to write to")
    except OSError as exc:
        raise _write_refusal(path, exc) from None


def write_text(path, text: str) -> Path:
    """Atomically replace `path` with `text`: write a temp file in the same folder, fsync,
    rename. Readers see the old file or the new one, never a torn one; on any failure the
    temp file is removed and the old file (if any) is left as it was."""
    path = Path(path)
    _check_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_refusal(path, exc) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, (OSError, UnicodeEncodeError)):
            raise _write_refusal(path, exc) from None
        raise
    return path


def write_jsonl(path, rows: Iterable[dict]) -> Path:
    """Atomically replace `path` with `rows` (one JSON object per line)."""
    return write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_json(path, obj) -> Path:
    """Atomically replace `path` with pretty JSON."""
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path) -> dict:
    """Read one JSON document; every way it can be unreadable is one CaiError."""
    path = Path(path)
    text = _decode(path, _read_bytes(path))
    try:
        return _loads(text, str(path))
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


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def append_jsonl(path, rows: Iterable[dict]) -> None:
    """Append whole lines and fsync, so finished rows survive an interruption.

    An OSError while appending (a full disk) cuts the file back to its size before this
    call, so no torn line is left, and raises one CaiError naming the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_torn_tail(path)
    start = _size(path)
    try:
        with open(path, "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except (OSError, UnicodeEncodeError) as exc:
        if path.is_file():  # never truncate a device such as /dev/full
            os.truncate(path, start)
        raise _write_refusal(path, exc) from None


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
