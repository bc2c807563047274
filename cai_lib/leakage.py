"""Leakage detector: which eval instructions repeat, or nearly repeat, a train instruction or
a few-shot example used in data-generation prompts.

A pure detector: it reads no files and knows no corpus of its own; the reference corpus
for document frequencies is passed in. The split that uses it (pools, the shipped corpus,
the overlap report, `cai leakage`) is cai_lib.split.

Why not plain character n-grams: "What is the capital of France?" vs "What is the capital
city of France?" (a leak) and "... capital of France?" vs "... capital of Peru?" (different
facts, same template) score almost alike, because the template dominates the characters.
What separates them is whether the *fact-bearing* words agree. So every instruction is
first brought to a canonical token sequence, then compared in four tiers.

**Canonical tokens** (`fold`, `tokens`, `_analysis`), so cheap rewrites change nothing:

* Unicode: NFKC (fullwidth and mathematical letters/digits become ASCII), invisible
  characters dropped (zero-width space/joiners, soft hyphen, word joiner, BOM, variation
  selectors), homoglyphs folded (Cyrillic/Greek/Armenian look-alikes and Latin small
  capitals -> Latin; a Cyrillic or Greek word is folded only when it mixes with Latin
  letters or stands, all look-alikes, in mostly-Latin text, so real Russian or Greek text
  stays as it is), accents on Latin and Greek letters removed, case folded, digits of any
  script made ASCII, "1,000" -> "1000".
* English: possessives and contractions ("Thailand's" -> thailand, "don't" -> do not),
  a light plural/verb-s stemmer (dogs -> dog, cities -> city, horses/horse -> hors),
  number words -> digits ("twenty-four" -> 24, "four times four" -> 4 times 4; a lone
  "one" only next to arithmetic or another number, elsewhere it is a pronoun).
* Non-Latin scripts are tokenised, never dropped: spaced scripts (Cyrillic, Greek,
  Arabic, Hebrew, Devanagari, Hangul, ...) by words, minus a short hand list of function
  words; unspaced scripts (Han, kana, Thai, ...) are cut at a short list of function
  characters (的, 是, の, は, です, ...) and runs longer than two characters become
  character bigrams.
* Frames: stopwords and hand-listed instruction-frame words ("answer", "reply", "think",
  "carefully", ...) are dropped; a *core* view also drops a leading frame clause ending
  in a colon ("Here is a task for you. Read it and respond: ..."), whatever its words.

**Tiers** (the first that holds decides the pair's kind):

1. **exact**: equal surface text after Unicode folding, case and punctuation.
2. **near-exact** (reported as `exact`): equal canonical sequences — the same words in the
   same order once folding, possessives, plurals, number words, frame words and glue words
   (articles, be/do, wh-words, "of") are normalised. "What is four times four?" and
   "What's 4 times 4" are one question. Never vetoed by answers.
3. **near**: content words are the canonical tokens minus *template words* — words whose
   document frequency in the compared corpus (train + eval + few-shot + the shipped
   reference) is at least `max(TEMPLATE_MIN_DF, TEMPLATE_DF_FRACTION * N)`. Template words
   are derived from the data, so "capital" (in every capital question) drops out while
   "France" stays. Numbers are never template words: they are the facts of arithmetic.
   With IDF weights, a pair is near when the weighted containment of the smaller content
   set in the other is >= `NEAR_CONTAINMENT` and the weighted Jaccard >= `NEAR_JACCARD`,
   on the full text or on the core view. Typos: a word of >= `FUZZY_MIN_LEN` letters
   matches a word at Damerau-Levenshtein distance 1 (2 from `FUZZY_LONG_LEN` letters)
   unless *both* words are real words of the shipped reference corpus (so "Frnace"
   matches "France", but "Gambia" never matches "Zambia"). Edit distance, not character
   n-grams: a transposition ("frnace") keeps 2 of 6 trigrams of "france" while another
   country ("zambia"/"gambia") keeps 4 of 6, so n-gram overlap ranks them the wrong way.
4. **answer veto** (near pairs only): when both items carry value answers in their checks
   (contains_any / contains_all / number) and no answer of one matches an answer of the
   other after the same normalisation (number words = digits, case, accents, plurals,
   articles; a multi-word answer matches a word subset, "Washington, D.C." ~ "Washington"),
   the pair asks for different facts ("What is 3 plus 4?" vs "What is 3 times 4?") and is
   not flagged. Few-shot strings carry no checks, so they are judged on words alone.

What it still cannot catch (fail-open cases, by design or not done):

* Pure synonyms and rewording that shares no content word ("How many legs does a spider
  have?" vs "A spider walks on how many limbs?"), translations into another language,
  and answer aliases that are different words ("Bucharest" vs "Bucuresti" after a
  paraphrase, "USA" vs "United States").
* Verb inflections other than -s ("absorbed" vs "absorb"), typos that make another real
  word ("desert"/"dessert") or need two edits in a word under `FUZZY_LONG_LEN` letters
  ("aminal"), words split by spaces or punctuation ("K e n y a", "Ke-nya"), leetspeak
  ("Fr4nce"), Russian/Arabic inflections (no stemmer for them), Chinese/Japanese rewording
  beyond the function-character list. tests/fixtures/leakage_paraphrases pins these.
* An embedding-based semantic check is not done: it would need a sentence-embedding model
  and a threshold that separates "capital of France" from "capital of Peru", measured on
  a labelled set; neither exists in this package, and an unmeasured threshold would be a
  guess.

Measured on that labelled set (tests/test_leakage_paraphrases.py): 52/52 planted leaks in
14 evasion classes caught (the guard before this design: 14/52), 0/21 clean controls and
0/300 pairs of distinct non-Latin instructions flagged (before: 1/21 and 300/300).

Known fail-closed cases (flagged although distinct): without answers to veto, questions
that differ only in a template word ("3 plus 4" vs "3 times 4"), or a one-letter
difference in a word the reference corpus does not know.

Document frequencies come from the unique union of the compared files and the reference
corpus (cai_lib.split passes the shipped one: both pools + few-shot bank), so a sampled split gets exactly the
decisions its pools were split with, and a two-line file still knows "capital" is a
template word. Candidates are found through inverted indexes on content words and on
one-deletion variants (for typos), so 1,000 x 300 items take well under a second.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from functools import lru_cache
from typing import Iterable, Sequence

METHOD = (
    "exact: equal after normalization (Unicode NFKC, invisible characters removed, homoglyphs "
    "folded, accents and case removed, punctuation removed), or equal canonical word sequences "
    "(possessives, plurals, number words as digits, frame and glue words removed); "
    "near: IDF-weighted containment and Jaccard of content words (tokens minus stopwords, "
    "instruction-frame words and corpus template words with high document frequency; "
    "numbers always kept; non-Latin scripts by words or character bigrams; one-edit typos "
    "matched), on the full text or with a leading frame clause removed, vetoed when both "
    "items' normalized check answers are disjoint"
)
TEMPLATE_MIN_DF = 12          # a word must occur in at least this many instructions ...
TEMPLATE_DF_FRACTION = 0.02   # ... and in >= 2% of them to count as a template word
NEAR_CONTAINMENT = 0.8
NEAR_JACCARD = 0.4
FUZZY_MIN_LEN = 5             # shorter words are too often real neighbours (cat/car, Iran/Iraq)
FUZZY_LONG_LEN = 10           # from this length two edits still count as a typo
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

# ---------------------------------------------------------------------------------------
# Unicode folding
# ---------------------------------------------------------------------------------------

# Invisible characters NFKC keeps: all format characters (category Cf: zero-width space and
# joiners, soft hyphen, word joiner, BOM, bidi marks) plus these.
_INVISIBLE_EXTRA = frozenset("\u034f\u115f\u1160\u3164\uffa0\u2800") | frozenset(map(chr, range(0xFE00, 0xFE10)))
# Latin look-alikes from other scripts (Unicode confusables, the letters that pass for
# Latin in ordinary fonts).
_HOMOGLYPHS = {
    **dict(zip("АВЕЅІЈКМНОРСТХУԚԜ", "ABESIJKMHOPCTXYQW")),          # Cyrillic capitals
    **dict(zip("аеѕіјорсхуԁһԛԝӏ", "aesijopcxydhqwl")),               # Cyrillic small
    **dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "ABEZHIKMNOPTYX")),                 # Greek capitals
    **dict(zip("οινκρυχα", "oivkpuxa")),                              # Greek small
    **dict(zip("օսցհոզ", "oughnq")),                                  # Armenian small
}
# Latin letters that look like other Latin letters: always folded (no script question).
_LATIN_LOOKALIKES = str.maketrans({
    **dict(zip("ᴀʙᴄᴅᴇɢʜɪᴊᴋʟᴍɴᴏᴘʀꜱᴛᴜᴠᴡʏᴢ", "abcdeghijklmnoprstuvwyz")),
    "ı": "i", "ȷ": "j", "ɑ": "a", "ɡ": "g", "ℓ": "l",
})
_NON_LATIN_CONFUSABLE_SCRIPTS = ("CYRILLIC", "GREEK", "ARMENIAN")


@lru_cache(maxsize=None)
def _script(ch: str) -> str:
    """First word of the character's Unicode name (LATIN, CYRILLIC, CJK, HIRAGANA, ...)."""
    if ch.isascii():
        return "LATIN" if ch.isalpha() else "COMMON"
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else "UNKNOWN"


def _fold_homoglyphs(text: str) -> str:
    """Fold Cyrillic/Greek/Armenian look-alikes inside Latin words, and whole look-alike
    words in mostly-Latin text; real Russian/Greek words stay untouched."""
    scripts = Counter(_script(c) for c in text if c.isalpha())
    latin_majority = scripts["LATIN"] > sum(scripts[s] for s in _NON_LATIN_CONFUSABLE_SCRIPTS)

    def fold_word(m: re.Match) -> str:
        word = m.group(0)
        foreign = [c for c in word if _script(c) in _NON_LATIN_CONFUSABLE_SCRIPTS]
        if not foreign:
            return word
        mixed = len(foreign) < len(word)
        if mixed or (latin_majority and all(c in _HOMOGLYPHS for c in foreign)):
            return "".join(_HOMOGLYPHS.get(c, c) for c in word)
        return word

    return re.sub(r"[^\W\d_]+", fold_word, text)


def _strip_accents(text: str) -> str:
    """Drop combining marks on Latin and Greek letters (Chișinău -> Chisinau); marks of
    other scripts are letters' vowels (Devanagari) or change the letter (kana): kept."""
    out, base = [], ""
    for ch in unicodedata.normalize("NFD", text):
        if unicodedata.combining(ch):
            if _script(base) in ("LATIN", "GREEK"):
                continue
        else:
            base = ch
        out.append(ch)
    return unicodedata.normalize("NFC", "".join(out))


@lru_cache(maxsize=65536)
def fold(text: str) -> str:
    """Unicode-level canonical text: NFKC, invisible characters removed, homoglyphs and
    accents folded, case folded, digits of every script ASCII, thousands separators gone."""
    text = str(text)
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
        text = "".join(c for c in text if unicodedata.category(c) != "Cf" and c not in _INVISIBLE_EXTRA)
        text = text.translate(_LATIN_LOOKALIKES)
        text = _fold_homoglyphs(text)
        text = _strip_accents(text)
        text = "".join(str(unicodedata.decimal(c)) if unicodedata.category(c) == "Nd" and not c.isascii() else c
                       for c in text)
    text = text.casefold()
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)


# ---------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------

_APOS = "'\u2019\u2018`\u00b4\u02bc"
_CONTRACTIONS = [
    (re.compile(rf"\b(can)[{_APOS}]t\b|\b(can)(not)\b"), r"\1\2 not"),
    (re.compile(rf"\bwon[{_APOS}]t\b"), "will not"),
    (re.compile(rf"\bshan[{_APOS}]t\b"), "shall not"),
    (re.compile(rf"n[{_APOS}]t\b"), " not"),
    # Possessive and pronoun contractions carry no fact: Thailand's -> Thailand.
    (re.compile(rf"[{_APOS}](?:s|re|m|ve|ll|d)\b"), ""),
    (re.compile(rf"(?<=s)[{_APOS}](?!\w)"), ""),           # plural possessive: dogs' -> dogs
]
_UNSPACED_SCRIPTS = frozenset({"CJK", "HIRAGANA", "KATAKANA", "KATAKANA-HIRAGANA", "THAI", "LAO", "KHMER",
                               "MYANMAR", "TIBETAN", "HALFWIDTH", "IDEOGRAPHIC"})


def _is_word_char(ch: str) -> bool:
    if ch.isascii():
        return ch.isalnum()
    return unicodedata.category(ch)[0] in "LNM"


def _is_unspaced(ch: str) -> bool:
    return not ch.isascii() and _script(ch) in _UNSPACED_SCRIPTS


def _split_words(text: str) -> list[str]:
    """Maximal runs of letters/digits/marks; a run changes token where it switches between
    a spaced and an unspaced script ("iPhone是" -> iphone, 是)."""
    out, cur, cur_unspaced = [], [], False
    for ch in text:
        if not _is_word_char(ch):
            if cur:
                out.append("".join(cur))
                cur = []
            continue
        uns = _is_unspaced(ch) if not unicodedata.combining(ch) else cur_unspaced
        if cur and uns != cur_unspaced:
            out.append("".join(cur))
            cur = []
        cur.append(ch)
        cur_unspaced = uns
    if cur:
        out.append("".join(cur))
    return out


@lru_cache(maxsize=65536)
def _tokens(text: str) -> tuple:
    t = fold(text)
    for pat, rep in _CONTRACTIONS:
        t = pat.sub(rep, t)
    return tuple(_split_words(t))


def tokens(text: str) -> list[str]:
    """Surface tokens: folded text cut into words (unspaced-script runs kept whole)."""
    return list(_tokens(str(text)))


def normalize(text: str) -> str:
    """Unicode-folded, lowercased, punctuation-free text with single spaces (the exact key).
    Non-Latin text is kept: "Какая столица Франции?" -> "какая столица франции"."""
    return " ".join(_tokens(str(text)))


# ---------------------------------------------------------------------------------------
# Canonical words: numbers, stemming, stopwords, unspaced scripts
# ---------------------------------------------------------------------------------------

_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_TENS["fourty"] = 40  # the common misspelling
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
# Next to these, a lone "one" is the number, not the pronoun ("one plus one").
_ARITHMETIC = frozenset("plus minus times multiplied divided add added subtract subtracted equals equal sum "
                        "product squared and".split())


def _is_number(tok: str) -> bool:
    return tok.isdigit() or tok in _UNITS or tok in _TENS


def _numbers_to_digits(toks: Sequence[str]) -> list[tuple[str, str]]:
    """(as written, canonical) per token, spelled numbers as digits: "twenty four" -> 24,
    "one hundred and five" -> 105, "four times four" -> 4 times 4. A single number word
    keeps its written form beside the digit (("three", "3")): the content model decides on
    the written form whether it is a frame word ("Give three examples"). A lone "one" stays
    a word unless next to arithmetic or another number ("one sentence", "which one")."""
    out, i, n = [], 0, len(toks)
    while i < n:
        tok = toks[i]
        if tok not in _UNITS and tok not in _TENS:
            out.append((tok, tok))
            i += 1
            continue
        total, current, j, last = 0, 0, i, None
        while j < n:
            w = toks[j]
            if w in _UNITS and last in (None, "tens", "scale"):
                current += _UNITS[w]
                last = "unit"
            elif w in _TENS and last in (None, "scale"):
                current += _TENS[w]
                last = "tens"
            elif w in _SCALES and last in ("unit", "tens"):
                if _SCALES[w] == 100:
                    current *= 100
                else:
                    total += current * _SCALES[w]
                    current = 0
                last = "scale"
            elif w == "and" and last == "scale" and j + 1 < n and (toks[j + 1] in _UNITS or toks[j + 1] in _TENS):
                pass
            else:
                break
            j += 1
        if j == i + 1 and tok == "one":
            prev, nxt = (toks[i - 1] if i else ""), (toks[j] if j < n else "")
            if not ({prev, nxt} & _ARITHMETIC or _is_number(prev) or _is_number(nxt)):
                out.append((tok, tok))
                i += 1
                continue
        digits = str(total + current)
        out.append((tok if j == i + 1 else digits, digits))
        i = j
    return out


def stem(word: str) -> str:
    """Light English plural/verb-s stemmer, applied to both sides alike: dogs/dog -> dog,
    cities/city -> city, boxes/box -> box, horses/horse -> hors. Conflation is the point;
    the stems need not be words."""
    if len(word) < 3 or not word.isascii() or not word.isalpha():
        return word
    if len(word) > 3:
        if word.endswith("ies") and len(word) > 4:
            word = word[:-3] + "y"
        elif word.endswith(("sses", "ches", "shes", "xes", "zes", "oes")):
            word = word[:-2]
        elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
            word = word[:-1]
    if word.endswith("e") and len(word) > 2:
        word = word[:-1]
    return word


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


def _canonical_pairs(toks: Sequence[str], drop: frozenset) -> list[tuple[str, str]]:
    """(as written, canonical) per kept token: number words as digits, stemmed, `drop`
    removed (checked before and after stemming, so "questions" and "answers" go too)."""
    out = []
    for surface, t in _numbers_to_digits(toks):
        if _is_unspaced(t[0]):
            out.extend((p, p) for p in _unspaced_pieces(t))
            continue
        if t in drop:
            continue
        # Stopwords kept here (near-exact key) stay as they are: "one" is not "on".
        s = t if t in STOPWORDS else stem(t) if t.isascii() else _stem_foreign(t)
        if s and s not in drop:
            out.append((surface, s))
    return out


def _canonical(toks: Sequence[str], drop: frozenset) -> list[str]:
    return [c for _, c in _canonical_pairs(toks, drop)]


_CONTENT_DROP = STOPWORDS | FRAME_WORDS
_EXACT_DROP = GLUE_WORDS | FRAME_WORDS
_COLON = re.compile(r":(?!\d)")


def _core_tokens(text: str) -> tuple | None:
    """Tokens after a leading frame clause ("Think carefully, then tell me: X" -> X), or
    None when there is none. Several clauses may stack ("Question: Please answer: X")."""
    folded, core = fold(str(text)), None
    for _ in range(3):
        m = _COLON.search(folded)
        if not m:
            break
        head, rest = folded[:m.start()], folded[m.end():]
        if len(_split_words(head)) > FRAME_PREFIX_MAX_TOKENS or len(_tokens(rest)) < 2:
            break
        folded, core = rest, _tokens(rest)
    return core


def _marked(words: Iterable[str]) -> frozenset:
    """A set where a repeated word gets an occurrence mark ("3", "3#2"), so that
    "3 times 3" and "3 plus 4" do not look alike (a multiset, as arithmetic needs)."""
    seen: Counter = Counter()
    out = set()
    for w in words:
        seen[w] += 1
        out.add(w if seen[w] == 1 else f"{w}#{seen[w]}")
    return frozenset(out)


@lru_cache(maxsize=65536)
def _analysis(text: str) -> tuple:
    """(exact key, near-exact key, content candidates of the full text, of the core view);
    candidates are (as written, canonical) pairs minus stopwords and frame words."""
    toks = _tokens(text)
    exact = " ".join(toks) or "".join(fold(text).split())   # emoji-only text still has a key
    canon = tuple(_canonical(toks, _EXACT_DROP))
    full = tuple(_canonical_pairs(toks, _CONTENT_DROP))
    core_toks = _core_tokens(text)
    core = tuple(_canonical_pairs(core_toks, _CONTENT_DROP)) if core_toks is not None else full
    return exact, canon, full, core


def _base_words(text: str) -> frozenset:
    """Content candidates of a text as written (stopwords and frame words removed), with
    occurrence marks for repeats: what template words are decided on."""
    return _marked(s for s, _ in _analysis(str(text))[2])


# ---------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------

def _answer_key(value) -> str:
    """One answer in canonical form: "Sixteen" = 16 = "16.0", "the Pacific Ocean" =
    "pacific ocean", "BUCUREȘTI" = "bucuresti", "kittens" = "kitten"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if re.fullmatch(r"[-+]?\d+(\.\d+)?", text):   # a number keeps its sign: -5 is not 5
        num = float(text)
        return str(int(num)) if num.is_integer() else str(num)
    toks = _tokens(str(value))
    return " ".join(_canonical(toks, frozenset({"a", "an", "the"})))


def answers_of(item) -> frozenset:
    """Normalized value answers from an item's checks (empty: nothing to compare)."""
    if not isinstance(item, dict):
        return frozenset()
    out = set()
    for chk in item.get("checks") or []:
        if not isinstance(chk, dict):
            continue
        kind = chk.get("kind")
        if kind in ("contains_any", "contains_all"):
            values = chk.get("values") or []
            out.update(_answer_key(v) for v in (values if isinstance(values, list) else [values]))
        elif kind == "number" and chk.get("value") is not None:
            out.add(_answer_key(chk["value"]))
    out.discard("")
    return frozenset(out)


def answers_overlap(a: frozenset, b: frozenset) -> bool:
    """Some answer of one is an answer of the other; a multi-word answer also matches its
    word subsets ("washington d c" ~ "washington")."""
    if a & b:
        return True
    for x in a:
        xs = set(x.split())
        for y in b:
            ys = set(y.split())
            if xs <= ys or ys <= xs:
                return True
    return False


def entries(items, source: str) -> list[dict]:
    """Uniform view of items (dicts with id/instruction/checks) or bare few-shot strings."""
    out = []
    for i, it in enumerate(items):
        if isinstance(it, str):
            out.append({"id": f"{source}-{i}", "instruction": it, "answers": frozenset(), "source": source})
        else:
            out.append({"id": str(it.get("id", f"{source}-{i}")), "instruction": str(it.get("instruction", "")),
                        "answers": answers_of(it), "source": it.get("source", source)})
    return out


# ---------------------------------------------------------------------------------------
# Typos
# ---------------------------------------------------------------------------------------

def _edit_distance(a: str, b: str, limit: int) -> int:
    """Damerau-Levenshtein (optimal string alignment) distance, or limit + 1 when above it."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2, prev = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1]


def _typo_limit(a: str, b: str) -> int:
    """Edits that still count as a typo between two words (0: the words are not eligible)."""
    if "#" in a or "#" in b or not (a.isalpha() and b.isalpha()):
        return 0
    shorter = min(len(a), len(b))
    if shorter < FUZZY_MIN_LEN:   # measured on stems: "hors"/"hous" (horse/house) are too short
        return 0
    return 2 if shorter >= FUZZY_LONG_LEN else 1


def _deletions(word: str) -> set:
    return {word[:k] + word[k + 1:] for k in range(len(word))} | {word}


class ContentModel:
    """Template words, IDF weights and the reference vocabulary (real words that are never
    taken for typos of each other)."""

    def __init__(self, instructions: Iterable[str], known_words: Iterable[str] = ()):
        texts = [str(t) for t in instructions]
        self.n = len(texts)
        # Template words are decided on words as written ("colors" is not "color", "three"
        # in "Give three examples" is a frame word); matching then uses canonical forms.
        written_df = Counter(w for t in texts for w in _base_words(t))
        self.template_cutoff = max(TEMPLATE_MIN_DF, TEMPLATE_DF_FRACTION * self.n)
        self.template_words = {w for w, c in written_df.items()
                               if c >= self.template_cutoff and not w.split("#")[0].isdigit()}
        self.known = frozenset(known_words)
        self._content_cache: dict = {}
        # Words that are dropped anyway (template, stop and frame words of 4+ letters): an
        # unknown word one edit away is their typo ("captial", "whta") and goes too.
        targets = {w for w in self.template_words if w.isalpha()} | {
            w for w in STOPWORDS | FRAME_WORDS if len(w) >= 4 and w.isascii()}
        self._drop_index = defaultdict(set)
        for t in targets:
            for d in _deletions(t):
                self._drop_index[d].add(t)
        self._typo_of_dropped: dict = {}
        # IDF over canonical content words (after template removal).
        self.df = Counter(w for t in texts for w in self.content(t))

    def _is_dropped_typo(self, w: str) -> bool:
        """An unknown word one edit from a template/stop/frame word is that word mistyped."""
        if w not in self._typo_of_dropped:
            hit = False
            if len(w) >= 4 and w.isascii() and w.isalpha() and w not in self.known:
                hit = any(_edit_distance(w, t, 1) <= 1 for d in _deletions(w) for t in self._drop_index.get(d, ()))
            self._typo_of_dropped[w] = hit
        return self._typo_of_dropped[w]

    def content(self, text: str) -> frozenset:
        return self._strip(_analysis(str(text))[2])

    def views(self, text: str) -> tuple[frozenset, frozenset]:
        """Content words of the full text and of its core (leading frame clause removed)."""
        _, _, full, core = _analysis(str(text))
        return self._strip(full), self._strip(core)

    def _strip(self, pairs: tuple) -> frozenset:
        """Canonical content words: candidates whose written form is not a template word
        (nor a typo of one), canonical forms with occurrence marks."""
        if pairs not in self._content_cache:
            seen: Counter = Counter()
            keep = []
            for written, canonical in pairs:
                seen[written] += 1
                marked = written if seen[written] == 1 else f"{written}#{seen[written]}"
                if marked not in self.template_words and not self._is_dropped_typo(written):
                    keep.append(canonical)
            self._content_cache[pairs] = _marked(keep)
        return self._content_cache[pairs]

    def weight(self, w: str) -> float:
        # Smoothed IDF (as in scikit-learn): rare, fact-bearing words weigh more.
        return math.log((self.n + 1) / (self.df.get(w, 0) + 1)) + 1.0

    def typo_match(self, a: str, b: str) -> bool:
        limit = _typo_limit(a, b)
        if not limit or (a in self.known and b in self.known):
            return False
        return _edit_distance(a, b, limit) <= limit

    def similarity(self, a: frozenset, b: frozenset, typos: bool = True) -> tuple[float, float]:
        """(weighted containment of the smaller set, weighted Jaccard); with `typos`, an
        unmatched word may match an unmatched word of the other set one edit away."""
        if not a or not b:
            return 0.0, 0.0
        inter = sum(self.weight(w) for w in a & b)
        wa, wb = sum(self.weight(w) for w in a), sum(self.weight(w) for w in b)
        if typos:
            left = sorted(b - a)
            for x in sorted(a - b):
                for y in left:
                    if self.typo_match(x, y):
                        # Count the pair once, as the lighter word, on both sides.
                        wx, wy = self.weight(x), self.weight(y)
                        inter += min(wx, wy)
                        wa, wb = wa - wx + min(wx, wy), wb - wy + min(wx, wy)
                        left.remove(y)
                        break
        if inter == 0:
            return 0.0, 0.0
        return inter / min(wa, wb), inter / (wa + wb - inter)


# ---------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------

def compare(eval_entries: list[dict], other_entries: list[dict], model: ContentModel,
            *, veto: bool = True, skip=None) -> list[dict]:
    """Flagged (eval, other) pairs; `skip(e, o)` can exclude pairs (e.g. the same item)."""
    exact_index, canon_index = defaultdict(list), defaultdict(list)
    inverted, typo_index = defaultdict(set), defaultdict(set)
    for j, o in enumerate(other_entries):
        exact, canon, _, _ = _analysis(o["instruction"])
        o["_norm"] = exact
        o["_views"] = model.views(o["instruction"])
        if exact:
            exact_index[exact].append(j)
        if canon:
            canon_index[canon].append(j)
        for w in o["_views"][0] | o["_views"][1]:
            inverted[w].add(j)
    for w in inverted:
        if _typo_limit(w, w):
            for d in _deletions(w):
                typo_index[d].add(w)
    flagged = []
    for e in eval_entries:
        exact, canon, _, _ = _analysis(e["instruction"])
        views = model.views(e["instruction"])
        seen = set()
        for key, index, how in ((exact, exact_index, "surface"), (canon, canon_index, "canonical")):
            for j in index.get(key, []) if key else []:
                o = other_entries[j]
                if j in seen or (skip and skip(e, o)):
                    continue
                # Same canonical words but nothing fact-bearing left ("opposite of yes" vs
                # "opposite of question": frame words only): leave it to the near tier.
                if how == "canonical" and not (views[0] and o["_views"][0]):
                    continue
                seen.add(j)
                flagged.append(_pair(e, o, "exact", 1.0, match=how))
        for j in sorted(_candidates(views, inverted, typo_index, model) - seen):
            o = other_entries[j]
            if skip and skip(e, o):
                continue
            best = _near_score(views, o["_views"], model)
            if best is None:
                continue
            if veto and e["answers"] and o["answers"] and not answers_overlap(e["answers"], o["answers"]):
                continue
            cont, jac = best
            flagged.append(_pair(e, o, "near", round(min(cont, 1.0) * 0.5 + jac * 0.5, 4),
                                 containment=round(cont, 4), jaccard=round(jac, 4)))
    return flagged


def _candidates(views, inverted, typo_index, model) -> set:
    """Other entries sharing a content word with either view, or a word one typo away."""
    out = set()
    for w in views[0] | views[1]:
        out |= inverted.get(w, set())
        if _typo_limit(w, w):
            for d in _deletions(w):
                for v in typo_index.get(d, ()):
                    if v != w and model.typo_match(w, v):
                        out |= inverted[v]
    return out


def _near_score(views, other_views, model) -> tuple[float, float] | None:
    """Best (containment, Jaccard) over full-vs-full and core-vs-core, if it passes."""
    best = None
    for a, b in ((views[0], other_views[0]), (views[1], other_views[1])):
        cont, jac = model.similarity(a, b)
        if cont >= NEAR_CONTAINMENT and jac >= NEAR_JACCARD and (best is None or cont + jac > sum(best)):
            best = (cont, jac)
    return best


def _pair(e, o, kind, score, **extra) -> dict:
    return {"eval_id": e["id"], "other_id": o["id"], "source": o["source"], "kind": kind,
            "score": score, **extra, "eval_instruction": e["instruction"], "other_instruction": o["instruction"]}


def find_leaks(train_items: Sequence, eval_items: Sequence, fewshot_instructions: Sequence = (), *,
               reference: Sequence[str]) -> list[dict]:
    """Every eval item that duplicates or nearly duplicates a train item or a few-shot example.

    Items are dicts with `id`, `instruction` and (optionally) `checks`; few-shot examples may
    be plain strings (ids `fewshot-N`) or dicts. Template words and IDF come from the
    unique union of these instructions and the `reference` corpus (`()` for the inputs
    alone; cai_lib.split passes the shipped instruction corpus).
    """
    train = entries(train_items, "train")
    fewshot = entries(fewshot_instructions, "fewshot")
    evals = entries(eval_items, "eval")
    model = content_model([x["instruction"] for x in train + fewshot + evals], reference)
    return compare(evals, train + fewshot, model)


@lru_cache(maxsize=4)
def _known_words(reference: tuple) -> frozenset:
    """Every content word of the reference corpus, as written and canonical."""
    return frozenset(w for t in reference for pair in _analysis(str(t))[2] for w in pair)


def content_model(instructions: Iterable[str], reference: Sequence[str]) -> ContentModel:
    """ContentModel over the unique (normalized) union of `instructions` and the `reference`
    corpus (pass () for the instructions alone)."""
    ref = tuple(reference)
    uniq = {}
    for t in list(ref) + list(instructions):
        uniq.setdefault(normalize(t), t)
    return ContentModel(uniq.values(), _known_words(ref))


def thresholds() -> dict:
    return {"template_min_df": TEMPLATE_MIN_DF, "template_df_fraction": TEMPLATE_DF_FRACTION,
            "near_containment": NEAR_CONTAINMENT, "near_jaccard": NEAR_JACCARD,
            "fuzzy_min_len": FUZZY_MIN_LEN, "fuzzy_long_len": FUZZY_LONG_LEN,
            "frame_prefix_max_tokens": FRAME_PREFIX_MAX_TOKENS}
