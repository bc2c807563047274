"""Check kinds: what each `checks` entry of an item asks of a response, and how it is read.

A *word* is a whitespace-separated token holding a letter or a digit; all matching is
case-insensitive. Length alone never fails a response: only a `max_words`/`min_words`/
`sentences`/`items` check asks about size. `regex` checks run through cai_lib.safe_regex
(validated at load, searched under a time limit; a search that runs out of time fails its
check and is noted). The verdicts built from these checks are cai_lib.scoring's.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Callable, Sequence

from . import safe_regex
from .errors import CaiError
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


def bare_word(token: str) -> str:
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


# --------------------------------------------------------------------------- checks

def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


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
            bad = safe_regex.pattern_problem(v)
    if bad:
        raise CaiError(f"{where}: field '{field}.{param}' is {v!r} — it must be {bad}")


def validate_checks(checks, where: str) -> None:
    """Raise CaiError (naming `where` and the field) unless `checks` is a valid check list."""
    if not isinstance(checks, list):
        raise CaiError(f"{where}: field 'checks' must be a list of check objects, got {type(checks).__name__}")
    for i, check in enumerate(checks):
        _validate_check(check, where, i)


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
        return safe_regex.search(check["pattern"], text)
    raise AssertionError(kind)  # unreachable after validation


def check_passes(check: dict, text: str) -> bool:
    """Does `text` satisfy one check? Validates the check first (CaiError if malformed).
    A regex search that runs out of time is a failed check (see the module docstring)."""
    _validate_check(check, "check", 0)
    try:
        return _passes(check, text)
    except TimeoutError:
        return False


def failed_checks(checks: Sequence[dict], text: str, on_timeout: Callable[[int, dict], None]) -> list[str]:
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


def timeout_note(rec: dict, i: int, check: dict, text: str, what: str) -> str:
    return (f"id {rec.get('id', '(none)')}: checks[{i}] regex {check['pattern']!r} found no answer within "
            f"{safe_regex.REGEX_TIMEOUT_S:g} s on the {len(text)}-character {what} — counted as failed; rewrite the "
            f"pattern without nested or overlapping repeats such as (a+)+ or (a|aa)+")
