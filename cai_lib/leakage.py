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

**Canonical tokens** (cai_lib.text's `fold` and `tokens`, cai_lib.canon's `analysis`), so cheap rewrites change nothing:

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
from collections import Counter, defaultdict
from functools import lru_cache
from typing import Iterable, Sequence

from .canon import FRAME_PREFIX_MAX_TOKENS, FRAME_WORDS, STOPWORDS, analysis, base_words, canonical, marked
from .text import normalize, token_tuple

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
    toks = token_tuple(str(value))
    return " ".join(canonical(toks, frozenset({"a", "an", "the"})))


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
        written_df = Counter(w for t in texts for w in base_words(t))
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
        return self._strip(analysis(str(text))[2])

    def views(self, text: str) -> tuple[frozenset, frozenset]:
        """Content words of the full text and of its core (leading frame clause removed)."""
        _, _, full, core = analysis(str(text))
        return self._strip(full), self._strip(core)

    def _strip(self, pairs: tuple) -> frozenset:
        """Canonical content words: candidates whose written form is not a template word
        (nor a typo of one), canonical forms with occurrence marks."""
        if pairs not in self._content_cache:
            seen: Counter = Counter()
            keep = []
            for written, canonical_word in pairs:
                seen[written] += 1
                occurrence = written if seen[written] == 1 else f"{written}#{seen[written]}"
                if occurrence not in self.template_words and not self._is_dropped_typo(written):
                    keep.append(canonical_word)
            self._content_cache[pairs] = marked(keep)
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
        exact, canon, _, _ = analysis(o["instruction"])
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
        exact, canon, _, _ = analysis(e["instruction"])
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
    return frozenset(w for t in reference for pair in analysis(str(t))[2] for w in pair)


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
