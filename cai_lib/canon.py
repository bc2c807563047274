"""The leakage detector's canonical words: which words of an instruction carry its fact.

Built on cai_lib.text's folding and tokens: stopwords and instruction-frame words are
dropped, number words become digits, plurals are stemmed, unspaced scripts (Chinese,
Japanese, Thai, ...) are cut at function characters into words or character bigrams, and a
leading frame clause ("Think carefully, then tell me: ...") is removed for the *core* view.
`analysis(text)` returns every key the detector compares (see cai_lib.leakage).
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Iterable, Sequence

from .text import fold, is_unspaced, numbers_to_digits, split_words, stem, token_tuple

FRAME_PREFIX_MAX_TOKENS = 12  # a leading "...:" clause this short may be a frame

STOPWORDS = frozenset("""
a an the of to in on at for from by with about as into over under and or but if then so than
is are was were be been being am do does did doing has have had having it its this that these
those there here what which who whom whose when where why how i me my you your he him his she
her we us our they them their one s t can could would should will shall may might must just
very too also any some each every such own same other only up out off again once more most
""".split()) | frozenset(
    # Russian, Arabic, Greek, Hindi, French, Spanish, German question/function words:
    # without them two questions in these languages share most of their words whatever
    # they ask. "не"/"لا"/"नहीं"/"nicht" flip a fact and stay content words.
    "что это как какая какой какое какие каков кто где когда сколько ли в во на с со и а у к о "
    "об по из за для от до есть является же бы "
    "ما ماذا هي هو في من على إلى الى عن أن إن كم هل متى أين كيف لماذا التي الذي و أو هذا هذه "
    "ποια ποιο ποιος ποιες τι ειναι η ο το οι τα τησ του των την τον και σε στο στη στην με απο "
    "για να ποσα ποσεσ ποσοι "  # Greek as fold() leaves it: no accents, final sigma casefolded
    "की का के है हैं क्या में से को और या होते होता होती कितने कितना कितनी कौन "
    # French, Spanish, German (as fold() leaves them: no accents, ß -> ss), minus words that
    # are also English content words (die, hat, den, son, hay, war).
    "quelle quel quels quelles est la le les l de du des un une et ou en dans que qui quoi combien "
    "il elle sont ce c d qu cual cuales es el los las del una y o como donde cuantos cuantas "
    "por para se wie heisst ist der das dem des von im ein eine einer und oder welche "
    "welcher welches wo wer wann warum wieviele viele haben sind es zu mit auf".split())
# Words of instruction frames ("Answer this question: ...", "Think carefully, then tell
# me: ..."). Hand-listed so that even a two-item file compares the questions, not their
# wrappers; the corpus-derived template words cover everything else.
FRAME_WORDS = frozenset("""
answer question q a please reply respond response complete sentence fill blank finish write
list name give tell short briefly brief word words quick using use message yes no
think carefully careful step kindly simply say wondering wonder curious following task query
prompt exactly correctly
""".split())
# Dropped from the near-exact sequence only: grammar that never changes which fact is
# asked ("What is the capital of X" = "Capital of X"). Deliberately smaller than
# STOPWORDS ("up"/"off", "before"/"after" must stay).
GLUE_WORDS = frozenset("a an the is are am was were be been do does did what which who whats of please".split())
# "not" and "never" flip a fact: they stay content words.

# Function characters/words of unspaced scripts: a run is cut at them (longest first), so
# "法国的首都是哪里" -> 法国 / 首都 and "日本の首都はどこですか" -> 日本 / 首都.
_CJK_FUNCTION = sorted("""
的 是 什么 哪里 哪儿 哪 吗 呢 了 在 有 个 多少 几 请 问 吧 啊 和 与 么 谁 怎么 为什么 这 那 这个 那个
の は が を に で と も か へ や ね よ です ます ですか でしょう ありますか いくつ なん 何 どこ だれ 誰 この その あの
""".split(), key=len, reverse=True)
_CJK_FUNCTION_RE = re.compile("|".join(map(re.escape, _CJK_FUNCTION)))


def _stem_foreign(word: str) -> str:
    # Arabic definite article: العاصمة = عاصمة ("the capital" = "capital").
    if word.startswith("ال") and len(word) > 3:
        return word[2:]
    return word


def _unspaced_pieces(run: str) -> list[str]:
    """An unspaced-script run cut at function characters; pieces of 1-2 characters are
    kept whole (most Chinese/Japanese words), longer pieces become character bigrams."""
    out = []
    for piece in _CJK_FUNCTION_RE.split(run):
        if len(piece) <= 2:
            out.extend([piece] if piece else [])
        else:
            out.extend(piece[k:k + 2] for k in range(len(piece) - 1))
    return out


def canonical_pairs(toks: Sequence[str], drop: frozenset) -> list[tuple[str, str]]:
    """(as written, canonical) per kept token: number words as digits, stemmed, `drop`
    removed (checked before and after stemming, so "questions" and "answers" go too)."""
    out = []
    for surface, t in numbers_to_digits(toks):
        if is_unspaced(t[0]):
            out.extend((p, p) for p in _unspaced_pieces(t))
            continue
        if t in drop:
            continue
        # Stopwords kept here (near-exact key) stay as they are: "one" is not "on".
        s = t if t in STOPWORDS else stem(t) if t.isascii() else _stem_foreign(t)
        if s and s not in drop:
            out.append((surface, s))
    return out


def canonical(toks: Sequence[str], drop: frozenset) -> list[str]:
    return [c for _, c in canonical_pairs(toks, drop)]


_CONTENT_DROP = STOPWORDS | FRAME_WORDS
_EXACT_DROP = GLUE_WORDS | FRAME_WORDS
_COLON = re.compile(r":(?!\d)")


def _coretoken_tuple(text: str) -> tuple | None:
    """Tokens after a leading frame clause ("Think carefully, then tell me: X" -> X), or
    None when there is none. Several clauses may stack ("Question: Please answer: X")."""
    folded, core = fold(str(text)), None
    for _ in range(3):
        m = _COLON.search(folded)
        if not m:
            break
        head, rest = folded[:m.start()], folded[m.end():]
        if len(split_words(head)) > FRAME_PREFIX_MAX_TOKENS or len(token_tuple(rest)) < 2:
            break
        folded, core = rest, token_tuple(rest)
    return core


def marked(words: Iterable[str]) -> frozenset:
    """A set where a repeated word gets an occurrence mark ("3", "3#2"), so that
    "3 times 3" and "3 plus 4" do not look alike (a multiset, as arithmetic needs)."""
    seen: Counter = Counter()
    out = set()
    for w in words:
        seen[w] += 1
        out.add(w if seen[w] == 1 else f"{w}#{seen[w]}")
    return frozenset(out)


@lru_cache(maxsize=65536)
def analysis(text: str) -> tuple:
    """(exact key, near-exact key, content candidates of the full text, of the core view);
    candidates are (as written, canonical) pairs minus stopwords and frame words."""
    toks = token_tuple(text)
    exact = " ".join(toks) or "".join(fold(text).split())   # emoji-only text still has a key
    canon = tuple(canonical(toks, _EXACT_DROP))
    full = tuple(canonical_pairs(toks, _CONTENT_DROP))
    core_toks = _coretoken_tuple(text)
    core = tuple(canonical_pairs(core_toks, _CONTENT_DROP)) if core_toks is not None else full
    return exact, canon, full, core


def base_words(text: str) -> frozenset:
    """Content candidates of a text as written (stopwords and frame words removed), with
    occurrence marks for repeats: what template words are decided on."""
    return marked(s for s, _ in analysis(str(text))[2])
