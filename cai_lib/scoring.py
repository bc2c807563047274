"""Score response records: check kinds, detectors and strict / loose / form (DESIGN.md).

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

**Regex checks run under a time limit.** A pattern such as `(a|aa)+$` backtracks
exponentially on the wrong text (stdlib `re` spent 38 s of CPU on `(a+)+$` against 29
characters, four times more per two characters) and `re` cannot be interrupted. Item
patterns are therefore validated as Python `re` syntax (the language DESIGN.md promises)
and matched with the `regex` package (VERSION0, re-compatible), which answers many such
patterns at once (`(a+)+$` above: 2 ms) and stops any search after REGEX_TIMEOUT_S
seconds of CPU time (wall time is longer on a loaded machine).

Decision: a search that runs out of time *fails that check*, and the scored record
carries `check_errors`, one sentence per timed-out check naming the item id, the check
index and the pattern; `summarize` counts such records. The item file is not refused
for it at load: whether a search explodes depends on the response, which exists only at
scoring time, and a static test for "dangerous" patterns refuses safe ones
(`(\\w+\\s)+` is linear) while missing others. What *is* refused at load is what the
pattern alone decides: syntax re rejects, repeat counts that regex would unroll into
gigabytes (MAX_REPEAT_PRODUCT), and literal `{e<=1}`-style text that regex reads as a
fuzzy-match constraint. Normal patterns score exactly as under `re`, except that `re`
treats the Turkish dotless ı / dotted İ as case variants of i and `regex` (Unicode case
folding) does not.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Sequence

import regex as _regex

from .errors import CaiError

try:  # re's own parser, to vet a pattern's structure the way re reads it
    from re import _parser as _re_parser  # Python >= 3.11
except ImportError:  # Python 3.10
    import sre_parse as _re_parser  # type: ignore[no-redef]
from .jsonl import read_jsonl, write_jsonl
from .text import TENS, UNITS, ascii_forms

# kind -> the parameter it needs. Kept as data so validation and docs cannot drift.
CHECK_KINDS: dict[str, str] = {
    "contains_any": "values",
    "contains_all": "values",
    "excludes": "values",
    "max_words": "n",
    "min_words": "n",
    "sentences": "n",
    "items": "n",
    "number": "value",
    "yes_no": "value",
    "regex": "pattern",
}
DETECTORS: tuple[str, ...] = ("empty", "echo", "continuation")
FINISH_REASONS: tuple[str, ...] = ("eos", "length", "stop")
LENGTH_FAILURE = "finish_reason=length"
# Loose scoring drops `continuation` by construction (the text is cut before it).
LOOSE_DETECTORS: tuple[str, ...] = ("empty", "echo")
# Seconds one regex search may take. Normal item patterns finish in microseconds on any
# response a model writes, so the limit is five orders of magnitude above real use and
# only a runaway backtracking search reaches it (the verdict would then depend on the
# machine's speed; recording it in `check_errors` keeps that visible).
REGEX_TIMEOUT_S = 1.0
# The regex package unrolls a piece's minimum repeat count when it compiles (a{1000000}
# takes 2 s and 270 MB; a{99999999} exhausts memory), so validation bounds the product
# of minimum counts along any nesting path. Real checks need \d{4}, not \d{100000}.
MAX_REPEAT_PRODUCT = 10_000
_REPEAT_OPS = ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")

# Markers that open a new prompt on a later line: the model has stopped answering and
# started writing the next exercise of an imagined document.
_PROMPT_MARKERS = ("q", "question", "instruction", "human", "user")
# A number between marker and colon ("Question 2:", "Q3:") still opens a new prompt.
_PROMPT_RE = re.compile(r"(?:%s)\s*\d*\s*:" % "|".join(_PROMPT_MARKERS), re.IGNORECASE)

# Spelled numbers the scorer reads: zero..twenty (from the one table in cai_lib.text).
_NUMBER_WORDS = {**{w: i for i, w in enumerate(UNITS)}, TENS[0]: 20}
# Digits: 1,000 groups, decimals, a leading minus that is not a range dash ("3-5").
# Number words must not be part of a hyphenated compound: "twenty-one" is not 1.
_NUMBER_RE = re.compile(
    r"(?P<num>(?:(?<![\w-])-)?(?<![\d.])(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?)"
    r"|(?<![\w-])(?P<word>%s)(?![\w-])" % "|".join(_NUMBER_WORDS),
    re.IGNORECASE,
)
_YES_NO_RE = re.compile(r"(?<![\w-])(yes|no)(?![\w-])", re.IGNORECASE)

_BULLET_RE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+\S")
_TERMINATOR_RE = re.compile(r"[.!?]+[\"')\]\u00bb]*(?=\s|$)")
# Tokens whose final "." does not end a sentence (checked only for a lone "." run).
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "e.g", "i.e", "cf"}
_INITIALS_RE = re.compile(r"(?:[a-z]\.)*[a-z]")

# --------------------------------------------------------------------------- text helpers

def _is_word(token: str) -> bool:
    return any(ch.isalnum() for ch in token)


def words(text: str) -> list[str]:
    """Whitespace-separated tokens holding a letter or a digit (the design's *word*)."""
    return [t for t in ascii_forms(text).split() if _is_word(t)]


def word_count(text: str) -> int:
    return len(words(text))


def _bare(token: str) -> str:
    """A word without the punctuation around it, lower-cased ("question:" -> "question")."""
    return re.sub(r"^[^\w]+|[^\w]+$", "", token).lower()


@functools.lru_cache(maxsize=4096)
def _phrase_re(value: str) -> re.Pattern:
    """Whole word/phrase pattern for `value`, valid for values with punctuation or digits.

    \\b fails on values that start or end with punctuation ("C++", "U.S."), so the
    boundary is "no word character on either side". A value ending in a digit must not
    continue as a longer number ("3" is not in "3.5" or "3,000"), and one starting with
    a digit must not be the tail of one ("5" is not in "1.5").
    """
    parts = [re.escape(p) for p in ascii_forms(value).strip().split()]
    body = r"\s+".join(parts)
    left = r"(?<!\w)"
    right = r"(?!\w)"
    if body[:1].isdigit():
        left += r"(?<!\d[.,])"
    if body[-1:].isdigit():
        right += r"(?![.,]\d)"
    return re.compile(left + body + right, re.IGNORECASE)


def contains_phrase(text: str, value: str) -> bool:
    return _phrase_re(value).search(ascii_forms(text)) is not None


def count_sentences(text: str) -> int:
    """Sentences end with . ! or ? followed by whitespace or the end of the text.

    Not sentence ends: a "." inside a number (3.14), after a common abbreviation (Dr.,
    e.g.), after initials (J. K. Rowling, U.S.), or after a list number at a line start
    ("1. "). Text after the last terminator that holds a word counts as one more
    (unfinished) sentence, so "Cats purr. They" cannot pass a one-sentence check while
    a single sentence missing its final period still counts as one.
    """
    text = ascii_forms(text)
    n = 0
    start = 0
    for m in _TERMINATOR_RE.finditer(text):
        head = text[start:m.start()]
        if m.group().startswith(".") and not any(c in m.group() for c in "!?") and head.split():
            token = head.split()[-1]
            core = token.lower().lstrip("([\"'")
            line_start = text.rfind("\n", 0, m.start()) + 1
            first_on_line = text[line_start:m.start()].strip() == token
            if (core in _ABBREVIATIONS or _INITIALS_RE.fullmatch(core)
                    or (first_on_line and token.isdigit())):
                continue
        if _is_word(text[start:m.end()]):
            n += 1
        start = m.end()
    if _is_word(text[start:]):
        n += 1
    return n


def _split_inline_list(line: str) -> list[str]:
    """One line as a list: commas, then a final "and"/"or" in the last part."""
    line = line.strip().rstrip(".!?;").strip()
    parts = [p.strip() for p in line.split(",")]
    last = parts.pop() if parts else ""
    lead = re.match(r"(?:and|or)\s+(.*)$", last, re.IGNORECASE | re.DOTALL)
    if lead and parts:  # "a, b, and c": the Oxford comma already split it
        parts.append(lead.group(1))
    else:
        tail = re.split(r"\s+(?:and|or)\s+(?!.*\s(?:and|or)\s)", last, maxsplit=1, flags=re.IGNORECASE)
        parts.extend(tail)
    return [p for p in parts if _is_word(p)]


def count_items(text: str) -> int:
    """List items: bullet lines (-, *, •) or numbered lines (1. / 1)) when there are any.

    Otherwise header lines ending in ":" ("Here are three fruits:") are skipped; the first
    remaining line is split on commas and a final "and"/"or"; if that gives a single item
    and more lines follow, each non-blank line is an item (a plain one-per-line list).
    """
    lines = [ln for ln in ascii_forms(text).split("\n") if ln.strip()]
    marked = [ln for ln in lines if _BULLET_RE.match(ln)]
    if marked:
        return len(marked)
    body = [ln for ln in lines if not ln.rstrip().endswith(":")]
    if not body:
        return 0
    inline = _split_inline_list(body[0])
    if len(inline) >= 2 or len(body) == 1:
        return len(inline)
    return len(body)


def _number_value(m: re.Match) -> float:
    if m.group("word"):
        return float(_NUMBER_WORDS[m.group("word").lower()])
    return float(m.group("num").replace(",", ""))


def last_number(text: str) -> float | None:
    """The last number in the text: digits (-3, 1,000, 2.5) or a word zero..twenty."""
    found = None
    for m in _NUMBER_RE.finditer(ascii_forms(text)):
        found = m
    return None if found is None else _number_value(found)


def first_yes_no(text: str) -> str | None:
    m = _YES_NO_RE.search(ascii_forms(text))
    return m.group(1).lower() if m else None


# --------------------------------------------------------------------------- detectors

def _normalize_ws(text: str) -> str:
    return " ".join(ascii_forms(text).split()).lower()


def is_empty(response: str) -> bool:
    return word_count(response) == 0


def is_echo(response: str, instruction: str) -> bool:
    """The response contains the whole (whitespace-normalized) instruction."""
    needle = _normalize_ws(instruction)
    return bool(needle) and needle in _normalize_ws(response)


def is_continuation_line(line: str, instruction: str) -> bool:
    """Does this line open a new prompt (Q:, Question:, ... or the instruction's opening)?

    Leading markdown decoration is ignored so "### Instruction:" counts.
    """
    stripped = line.strip().lstrip("#*> \t").strip()
    if not stripped:
        return False
    if _PROMPT_RE.match(stripped):
        return True
    opening = [_bare(w) for w in words(instruction)][:3]
    if not opening:
        return False
    head = [_bare(w) for w in words(stripped)][:len(opening)]
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


# --------------------------------------------------------------------------- checks

def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _subpatterns(av):
    """Every parsed sub-pattern inside one node's argument (groups, branches, lookarounds)."""
    if isinstance(av, _re_parser.SubPattern):
        yield av
    elif isinstance(av, (tuple, list)):
        for x in av:
            yield from _subpatterns(x)


def _repeat_product(sub) -> int:
    """Largest product of minimum repeat counts along any nesting path (an unrolled size)."""
    worst = 1
    for op, av in sub:
        if str(op) in _REPEAT_OPS:
            lo, _hi, body = av
            worst = max(worst, max(lo, 1) * _repeat_product(body))
        else:
            worst = max([worst] + [_repeat_product(x) for x in _subpatterns(av)])
    return worst


def _reads_as_fuzzy(pattern: str) -> bool:
    """Does the regex package read part of `pattern` as a fuzzy-match constraint?

    "x{e<=1}" is literal text to re but "x with at most one error" to regex (it matches
    "y"). The parse dump of regex's documented DEBUG flag is the one public place that
    says how regex read a pattern.
    """
    dump = io.StringIO()
    with contextlib.redirect_stdout(dump):
        _regex.compile(pattern, _regex.IGNORECASE | _regex.VERSION0 | _regex.DEBUG)
    return any(line.lstrip().startswith("FUZZY") for line in dump.getvalue().splitlines())


@functools.lru_cache(maxsize=1024)
def _pattern_problem(pattern: str) -> str | None:
    """Why `pattern` cannot be a check, as "it must be ..." text; None when it can.
    Cached: every scored record re-validates its item's checks."""
    try:
        re.compile(pattern, re.IGNORECASE)  # the pattern language DESIGN.md promises
    except re.error as exc:
        return f"a valid regular expression ({exc})"
    tree = _re_parser.parse(pattern, re.IGNORECASE)
    if _repeat_product(tree) > MAX_REPEAT_PRODUCT:
        return (f"a pattern whose repeat counts multiply to at most {MAX_REPEAT_PRODUCT} "
                f"(larger counts take seconds and gigabytes to compile)")
    try:
        _compiled(pattern)
        fuzzy = _reads_as_fuzzy(pattern)
    except _regex.error as exc:
        return f"a valid regular expression ({exc}; write a literal brace as \\{{ or [{{])"
    if fuzzy:
        return ("a pattern without literal {...} text such as {e<=1}, which the matcher reads as a "
                "fuzzy-match constraint; write a literal brace as \\{ or [{]")
    return None


def _validate_check(check, where: str, i: int) -> None:
    field = f"checks[{i}]"
    if not isinstance(check, dict):
        raise CaiError(f"{where}: field '{field}' must be an object like "
                       f'{{"kind": "contains_any", "values": ["Paris"]}}')
    kind = check.get("kind")
    if not isinstance(kind, str) or kind not in CHECK_KINDS:
        raise CaiError(f"{where}: field '{field}.kind' is {kind!r}, not a known check kind "
                       f"— use one of {', '.join(CHECK_KINDS)}")
    param = CHECK_KINDS[kind]
    if param not in check:
        raise CaiError(f"{where}: field '{field}.{param}' is missing — a {kind} check needs '{param}'")
    v = check[param]
    bad = None
    if param == "values":
        if not (isinstance(v, list) and v and all(isinstance(s, str) and s.strip() for s in v)):
            bad = "a non-empty list of non-empty strings"
    elif param == "n":
        if not (_is_int(v) and v >= (0 if kind in ("max_words", "min_words") else 1)):
            bad = "a whole number" + (" >= 0" if kind in ("max_words", "min_words") else " >= 1")
    elif kind == "number":
        if not _is_num(v):
            bad = "a number (e.g. 42 or 2.5)"
    elif kind == "yes_no":
        if not (isinstance(v, str) and v.lower() in ("yes", "no")):
            bad = '"yes" or "no"'
    elif kind == "regex":
        if not isinstance(v, str) or not v:
            bad = "a non-empty regular expression string"
        else:
            bad = _pattern_problem(v)
    if bad:
        raise CaiError(f"{where}: field '{field}.{param}' is {v!r} — it must be {bad}")


def validate_checks(checks, where: str) -> None:
    """Raise CaiError (naming `where` and the field) unless `checks` is a valid check list."""
    if not isinstance(checks, list):
        raise CaiError(f"{where}: field 'checks' must be a list of check objects, got {type(checks).__name__}")
    for i, check in enumerate(checks):
        _validate_check(check, where, i)


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str):
    """The `regex` package's compiled pattern: same syntax as re, but searches can time out."""
    return _regex.compile(pattern, _regex.IGNORECASE | _regex.VERSION0)


def _regex_search(pattern: str, text: str) -> bool:
    """Does `pattern` match somewhere in `text`? Raises TimeoutError after REGEX_TIMEOUT_S."""
    return _compiled(pattern).search(text, timeout=REGEX_TIMEOUT_S) is not None


def _passes(check: dict, text: str) -> bool:
    kind = check["kind"]
    if kind == "contains_any":
        return any(contains_phrase(text, v) for v in check["values"])
    if kind == "contains_all":
        return all(contains_phrase(text, v) for v in check["values"])
    if kind == "excludes":
        return not any(contains_phrase(text, v) for v in check["values"])
    if kind == "max_words":
        return word_count(text) <= check["n"]
    if kind == "min_words":
        return word_count(text) >= check["n"]
    if kind == "sentences":
        return count_sentences(text) == check["n"]
    if kind == "items":
        return count_items(text) == check["n"]
    if kind == "number":
        got = last_number(text)
        want = float(check["value"])
        return got is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
    if kind == "yes_no":
        return first_yes_no(text) == check["value"].lower()
    if kind == "regex":
        return _regex_search(check["pattern"], text)
    raise AssertionError(kind)  # unreachable after validation


def check_passes(check: dict, text: str) -> bool:
    """Does `text` satisfy one check? Validates the check first (CaiError if malformed).
    A regex search that runs out of time is a failed check (see the module docstring)."""
    _validate_check(check, "check", 0)
    try:
        return _passes(check, text)
    except TimeoutError:
        return False


def _failed_checks(checks: Sequence[dict], text: str, on_timeout: Callable[[int, dict], None]) -> list[str]:
    """Kinds of the checks `text` fails. A regex search that runs out of time counts as
    failed, and `on_timeout(index, check)` records why."""
    failed = []
    for i, check in enumerate(checks):
        try:
            ok = _passes(check, text)
        except TimeoutError:
            on_timeout(i, check)
            ok = False
        if not ok:
            failed.append(check["kind"])
    return failed


def _timeout_note(rec: dict, i: int, check: dict, text: str, what: str) -> str:
    return (f"id {rec.get('id', '(none)')}: checks[{i}] regex {check['pattern']!r} found no answer within "
            f"{REGEX_TIMEOUT_S:g} s on the {len(text)}-character {what} — counted as failed; rewrite the "
            f"pattern without nested or overlapping repeats such as (a+)+ or (a|aa)+")


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
    failed_checks = _failed_checks(checks, response,
                                   lambda i, c: notes.append(_timeout_note(rec, i, c, response, "response")))
    failures = _dedupe(failed_checks + fired + ([] if stopped else [LENGTH_FAILURE]))

    cut = loose_cut(response, instruction)
    if cut == response:  # nothing was cut: the same pure checks would give the same answers
        cut_failed, cut_fired = failed_checks, fired
    else:
        cut_failed = _failed_checks(checks, cut,
                                    lambda i, c: notes.append(_timeout_note(rec, i, c, cut, "loose cut")))
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
