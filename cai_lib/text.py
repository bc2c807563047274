"""Text normalisation, in one place: the forms under which two texts count as the same.

Four notions, each for its own question, all defined here:

* `ascii_forms` — curly quotes and the Unicode minus as ASCII, CRLF as LF: what the scorer
  reads responses through (punctuation and case kept: checks judge the surface).
* `squash_spaces` — whitespace runs as one space: "identical" for preference pairs.
* `plain_key` — lower case, punctuation to spaces, whitespace collapsed: "same words" for
  pair building and few-shot matching (cheap; no Unicode folding).
* `fold` / `tokens` / `normalize` — the leakage detector's canonical text: NFKC, invisible
  characters dropped, homoglyphs and accents folded, case folded, digits ASCII,
  contractions and possessives resolved, words cut script-aware (see cai_lib.leakage).

And the one number-word table (`UNITS`, `TENS`): read by the scorer, spelled out by the
task builders (`number_words`), turned into digits by the detector (`numbers_to_digits`).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Sequence

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2212": "-"})


def ascii_forms(text: str) -> str:
    """Curly quotes and the Unicode minus read as their ASCII forms; CRLF as LF."""
    return text.translate(_QUOTES).replace("\r\n", "\n").replace("\r", "\n")


def squash_spaces(text: str) -> str:
    """Runs of whitespace as one space, ends trimmed ("identical" pair texts)."""
    return " ".join(text.split())


def plain_key(s: str) -> str:
    """Lower-case, punctuation to spaces, whitespace collapsed (for "same text" tests)."""
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


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


def is_unspaced(ch: str) -> bool:
    return not ch.isascii() and _script(ch) in _UNSPACED_SCRIPTS


def split_words(text: str) -> list[str]:
    """Maximal runs of letters/digits/marks; a run changes token where it switches between
    a spaced and an unspaced script ("iPhone是" -> iphone, 是)."""
    out, cur, cur_unspaced = [], [], False
    for ch in text:
        if not _is_word_char(ch):
            if cur:
                out.append("".join(cur))
                cur = []
            continue
        uns = is_unspaced(ch) if not unicodedata.combining(ch) else cur_unspaced
        if cur and uns != cur_unspaced:
            out.append("".join(cur))
            cur = []
        cur.append(ch)
        cur_unspaced = uns
    if cur:
        out.append("".join(cur))
    return out


@lru_cache(maxsize=65536)
def token_tuple(text: str) -> tuple:
    t = fold(text)
    for pat, rep in _CONTRACTIONS:
        t = pat.sub(rep, t)
    return tuple(split_words(t))


def tokens(text: str) -> list[str]:
    """Surface tokens: folded text cut into words (unspaced-script runs kept whole)."""
    return list(token_tuple(str(text)))


def normalize(text: str) -> str:
    """Unicode-folded, lowercased, punctuation-free text with single spaces (the exact key).
    Non-Latin text is kept: "Какая столица Франции?" -> "какая столица франции"."""
    return " ".join(token_tuple(str(text)))


# ---------------------------------------------------------------------------------------
# Number words
# ---------------------------------------------------------------------------------------

# The one number-word table: scoring reads these words, the task builders spell answers
# with them and the leakage detector turns them into digits.
UNITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_UNITS = {w: i for i, w in enumerate(UNITS)}
_TENS = {w: 10 * (i + 2) for i, w in enumerate(TENS)}
_TENS["fourty"] = 40  # the common misspelling (read, never written)
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
# Next to these, a lone "one" is the number, not the pronoun ("one plus one").
_ARITHMETIC = frozenset("plus minus times multiplied divided add added subtract subtracted equals equal sum "
                        "product squared and".split())


def _is_number(tok: str) -> bool:
    return tok.isdigit() or tok in _UNITS or tok in _TENS


def numbers_to_digits(toks: Sequence[str]) -> list[tuple[str, str]]:
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


def number_words(n: int) -> list[str]:
    """The spelled-out forms of n (0-99, 100, 1000) a correct answer may use; [] beyond."""
    if n < len(UNITS):
        return [UNITS[n]]
    if n < 100:
        t, u = divmod(n, 10)
        tens = TENS[t - 2]
        return [tens] if u == 0 else [f"{tens}-{UNITS[u]}", f"{tens} {UNITS[u]}"]
    if n == 100:
        return ["one hundred", "a hundred"]
    if n == 1000:
        return ["one thousand", "a thousand"]
    return []


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
