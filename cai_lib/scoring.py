"""Score response records: detectors and the strict / loose / form verdicts (DESIGN.md).

Three verdicts per record, always reported together:

* **strict** – every check and every detector passes on the whole response and the
  model stopped by itself (`finish_reason` is not `length`). The gate uses this.
* **loose** – the response is cut at its first blank line (or first continuation line);
  then every check passes and the cut text is neither `empty` nor an `echo`. This
  credits a base model that answers correctly and then rambles on.
* **form** – every detector passes and the model stopped; checks are ignored. A 270M
  model fails many checks for lack of knowledge, not of instruction following; form
  separates "answered in the right shape and stopped" from "knew the answer".

Length alone never fails a response: only a `max_words`/`min_words`/`sentences`/`items`
check asks about size, and only where the item says so.

All matching is case-insensitive. A *word* is a whitespace-separated token holding a
letter or a digit. This module imports no torch: `cai score` must be instant.

The check kinds live in cai_lib.checks, their regex safety in cai_lib.safe_regex.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from .checks import bare_word, failed_checks, timeout_note, validate_checks, word_count, words
from .errors import CaiError
from .jsonl import read_jsonl, write_jsonl
from .text import ascii_forms, squash_spaces

DETECTORS: tuple[str, ...] = ("empty", "echo", "continuation")
FINISH_REASONS: tuple[str, ...] = ("eos", "length", "stop")
LENGTH_FAILURE = "finish_reason=length"
# Loose scoring drops `continuation` by construction (the text is cut before it).
LOOSE_DETECTORS: tuple[str, ...] = ("empty", "echo")

# Markers that open a new prompt on a later line: the model has stopped answering and
# started writing the next exercise of an imagined document.
_PROMPT_MARKERS = ("q", "question", "instruction", "human", "user")
# A number between marker and colon ("Question 2:", "Q3:") still opens a new prompt.
_PROMPT_RE = re.compile(r"(?:%s)\s*\d*\s*:" % "|".join(_PROMPT_MARKERS), re.IGNORECASE)


# --------------------------------------------------------------------------- detectors

def _echo_key(text: str) -> str:
    """What `echo` compares: the scorer's ASCII forms, whitespace squashed, lower case."""
    return squash_spaces(ascii_forms(text)).lower()


def is_empty(response: str) -> bool:
    return word_count(response) == 0


def is_echo(response: str, instruction: str) -> bool:
    """The response contains the whole (whitespace-normalized) instruction."""
    needle = _echo_key(instruction)
    return bool(needle) and needle in _echo_key(response)


def is_continuation_line(line: str, instruction: str) -> bool:
    """Does this line open a new prompt (Q:, Question:, ... or the instruction's opening)?

    Leading markdown decoration is ignored so "### Instruction:" counts.
    """
    stripped = line.strip().lstrip("#*> \t").strip()
    if not stripped:
        return False
    if _PROMPT_RE.match(stripped):
        return True
    opening = [bare_word(w) for w in words(instruction)][:3]
    if not opening:
        return False
    head = [bare_word(w) for w in words(stripped)][:len(opening)]
    return head == opening


def has_continuation(response: str, instruction: str) -> bool:
    """A line after the first one (the first continues the prompt's own line) opens a new prompt."""
    lines = ascii_forms(response).split("\n")
    return any(is_continuation_line(ln, instruction) for ln in lines[1:])


def detect(response: str, instruction: str) -> list[str]:
    """Names of the detectors that fire on `response`, in DETECTORS order."""
    fired = []
    if is_empty(response):
        fired.append("empty")
    if is_echo(response, instruction):
        fired.append("echo")
    if has_continuation(response, instruction):
        fired.append("continuation")
    return fired


def loose_cut(response: str, instruction: str) -> str:
    """The response up to its first blank line or first continuation line.

    Leading whitespace is dropped first: a base model often opens with a newline after
    the prompt, and that is not where its answer ends.
    """
    lines = ascii_forms(response).lstrip().split("\n")
    kept = [lines[0]]
    for ln in lines[1:]:
        if not ln.strip() or is_continuation_line(ln, instruction):
            break
        kept.append(ln)
    return "\n".join(kept)


# --------------------------------------------------------------------------- records

def _validate_record(rec, where: str) -> None:
    if not isinstance(rec, dict):
        raise CaiError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if "id" in rec:
        where = f"{where} (id {rec['id']})"
    for field in ("instruction", "response"):
        if field not in rec:
            raise CaiError(f"{where}: missing field '{field}' — a response record is an eval item "
                           f"plus 'response' and 'finish_reason'")
        if not isinstance(rec[field], str):
            raise CaiError(f"{where}: field '{field}' must be a string, got {type(rec[field]).__name__}")
    if "finish_reason" not in rec:
        raise CaiError(f"{where}: missing field 'finish_reason' — add one of {', '.join(FINISH_REASONS)} "
                       f"(generate records it; strict scoring needs to know whether the model stopped)")
    if rec["finish_reason"] not in FINISH_REASONS:
        raise CaiError(f"{where}: field 'finish_reason' is {rec['finish_reason']!r} — "
                       f"it must be one of {', '.join(FINISH_REASONS)}")
    if "checks" not in rec:
        raise CaiError(f"{where}: missing field 'checks' — copy the item's checks into the record (a list, may be empty)")
    validate_checks(rec["checks"], where)


def _dedupe(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


def score_record(rec: dict, where: str = "record") -> dict:
    """A copy of `rec` with strict, loose, form (bool), failures and loose_failures (names)."""
    _validate_record(rec, where)
    response, instruction, checks = rec["response"], rec["instruction"], rec["checks"]
    stopped = rec["finish_reason"] != "length"

    notes: list[str] = []

    fired = detect(response, instruction)
    check_failures = failed_checks(checks, response,
                                   lambda i, c: notes.append(timeout_note(rec, i, c, response, "response")))
    failures = _dedupe(check_failures + fired + ([] if stopped else [LENGTH_FAILURE]))

    cut = loose_cut(response, instruction)
    if cut == response:  # nothing was cut: the same pure checks would give the same answers
        cut_failed, cut_fired = check_failures, fired
    else:
        cut_failed = failed_checks(checks, cut,
                                   lambda i, c: notes.append(timeout_note(rec, i, c, cut, "loose cut")))
        cut_fired = detect(cut, instruction)
    loose_failures = _dedupe(cut_failed + [d for d in cut_fired if d in LOOSE_DETECTORS])

    out = dict(rec)
    out.update(strict=not failures, loose=not loose_failures, form=not fired and stopped,
               failures=failures, loose_failures=loose_failures)
    if notes:  # only then, so records of normal runs keep their shape
        out["check_errors"] = notes
    return out


def score_records(records: Sequence[dict], where: str = "record") -> list[dict]:
    return [score_record(r, f"{where} {i + 1}") for i, r in enumerate(records)]


def _rates(rows: Sequence[dict]) -> dict:
    n = len(rows)
    passed = {f: sum(bool(r[f]) for r in rows) for f in ("strict", "loose", "form")}
    out = {"n": n}
    out.update({f: (passed[f] / n if n else None) for f in passed})
    out["passed"] = passed
    return out


def summarize(scored: Sequence[dict], by: Sequence[str] | str = ("type",)) -> dict:
    """n, strict/loose/form rates (and pass counts) overall and per value of each `by` key,
    plus how often each failure reason occurred (strict and loose)."""
    if isinstance(by, str):
        by = (by,)
    for i, r in enumerate(scored):
        missing = [f for f in ("strict", "loose", "form", "failures") if f not in r]
        if missing:
            raise CaiError(f"record {i + 1}: field '{missing[0]}' is missing — score the records first "
                           f"(score_records or `cai score`)")
    out = _rates(scored)
    for key in by:
        groups: dict[str, list[dict]] = {}
        for r in scored:
            groups.setdefault(str(r.get(key, "(missing)")), []).append(r)
        out[f"by_{key}"] = {g: _rates(groups[g]) for g in sorted(groups)}
    for field in ("failures", "loose_failures"):
        counts = Counter(name for r in scored for name in r.get(field, []))
        out[field] = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    timed_out = sum(1 for r in scored if r.get("check_errors"))
    if timed_out:  # a regex ran out of time: say so where the reader looks first
        out["check_errors"] = timed_out
    return out


def read_records(path, what: str = "records") -> tuple[list[dict], list[int]]:
    """read_jsonl plus line numbers; a folder, unreadable or empty file is a one-line CaiError."""
    path = Path(path)
    try:
        is_dir = path.is_dir()
    except OSError:
        is_dir = False  # read_jsonl names the OS error
    if is_dir:
        raise CaiError(f"{path}: is a folder — pass the JSONL file of {what}")
    lines: list[int] = []
    rows = read_jsonl(path, line_numbers=lines)
    if not rows:
        raise CaiError(f"{path}: no {what} — the file is empty; pass a JSONL file with one object per line")
    return rows, lines


def _check_output_path(out) -> None:
    """Refuse an output path that is a folder before any scoring time is spent."""
    try:
        is_dir = Path(out).is_dir()
    except OSError:
        is_dir = False  # write_jsonl names the OS error
    if is_dir:
        raise CaiError(f"{out}: is a folder — pass a file path for the scored records (-o OUT.jsonl)")


def score_file(path, out=None, by: Sequence[str] | None = None) -> dict:
    """Score a JSONL of response records; write scored records atomically to `out`.

    Nothing is written unless every record scores, so bad input leaves no partial file;
    a failed write (full disk) leaves no file either (write_jsonl is atomic).
    The summary groups by type and, where records carry one, by prompt `format`.
    """
    if out:
        _check_output_path(out)
    rows, lines = read_records(path, "response records")
    scored = [score_record(r, f"{path}:{ln}") for r, ln in zip(rows, lines)]
    if by is None:
        by = ("type",) + (("format",) if any("format" in r for r in rows) else ())
    summary = summarize(scored, by=by)
    if out:
        write_jsonl(out, scored)  # a CaiError naming `out` if it cannot be written
    return summary
