"""Item `regex` checks, made safe: validated as Python `re`, searched under a time limit.

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
import re

import regex as _regex

try:  # re's own parser, to vet a pattern's structure the way re reads it
    from re import _parser as _re_parser  # Python >= 3.11
except ImportError:  # Python 3.10
    import sre_parse as _re_parser  # type: ignore[no-redef]

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
def pattern_problem(pattern: str) -> str | None:
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


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str):
    """The `regex` package's compiled pattern: same syntax as re, but searches can time out."""
    return _regex.compile(pattern, _regex.IGNORECASE | _regex.VERSION0)


def search(pattern: str, text: str) -> bool:
    """Does `pattern` match somewhere in `text`? Raises TimeoutError after REGEX_TIMEOUT_S."""
    return _compiled(pattern).search(text, timeout=REGEX_TIMEOUT_S) is not None
