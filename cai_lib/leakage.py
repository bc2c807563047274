"""Leakage guard: no eval instruction may repeat, or nearly repeat, a train instruction or a
few-shot example used in data-generation prompts.

Why not character n-grams: "What is the capital of France?" vs "What is the capital city
of France?" (a leak) and "... capital of France?" vs "... capital of Peru?" (different
facts, same template) score almost alike, because the template dominates the characters.
What separates them is whether the *fact-bearing* words agree. So:

1. **Exact**: instructions equal after normalization (lowercase, punctuation dropped,
   whitespace collapsed).
2. **Content words**: tokens minus function words, minus instruction-frame words
   ("answer", "reply", "complete", ...; a short hand list so two-line files work too), minus
   *template words* — words whose document frequency in the compared corpus (train + eval +
   few-shot) is at least `max(TEMPLATE_MIN_DF, TEMPLATE_DF_FRACTION * N)`. Template words
   are derived from the data, so "capital" (in every capital question) drops out while
   "France" stays. Numbers are never template words: they are the facts of arithmetic.
3. **Near-duplicate**: with IDF weights (rare words weigh more), the weighted containment
   of the smaller content set in the other is >= `NEAR_CONTAINMENT` and the weighted
   Jaccard is >= `NEAR_JACCARD`. A word added/dropped/swapped keeps both high; a different
   country, number or animal drops containment to the template's share (France vs Peru:
   their content sets are disjoint once "capital" is a template word).
4. **Answer veto**: when both items carry value answers in their checks (contains_any /
   contains_all / number) and those answers are disjoint, the pair asks for different
   facts ("What sound does a dog make?" vs "How many legs does a dog have?") and is not a
   near-duplicate. Few-shot strings carry no checks, so they are judged on words alone.

Document frequencies come from the unique union of the compared files and the shipped
instruction corpus (both pools + few-shot bank), so a sampled split gets exactly the
decisions its pools were split with, and a two-line file still knows "capital" is a
template word. Candidates are found through an inverted index on content words, so 1,000 x 300 items
take well under a second.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from .errors import CaiError
from .jsonl import read_json, read_jsonl, sha256_file, write_json

METHOD = (
    "exact: equal after normalization (lowercase, punctuation removed, whitespace collapsed); "
    "near: IDF-weighted containment and Jaccard of content words (tokens minus stopwords, "
    "instruction-frame words and corpus template words with high document frequency; "
    "numbers always kept), vetoed when both items' check answers are disjoint"
)
TEMPLATE_MIN_DF = 12          # a word must occur in at least this many instructions ...
TEMPLATE_DF_FRACTION = 0.02   # ... and in >= 2% of them to count as a template word
NEAR_CONTAINMENT = 0.8
NEAR_JACCARD = 0.4

STOPWORDS = frozenset("""
a an the of to in on at for from by with about as into over under and or but if then so than
is are was were be been being am do does did doing has have had having it its this that these
those there here what which who whom whose when where why how i me my you your he him his she
her we us our they them their one s t can could would should will shall may might must just
very too also any some each every such own same other only up out off again once more most
""".split())
# Words of instruction frames ("Answer this question: ...", "Reply to: ..."). Hand-listed so
# that even a two-item file compares the questions, not their wrappers; the corpus-derived
# template words cover everything else.
FRAME_WORDS = frozenset("""
answer question q a please reply respond response complete sentence fill blank finish write
list name give tell short briefly brief word words quick using use message yes no
""".split())
# "not" and "never" flip a fact: they stay content words.
_TOKEN = re.compile(r"[a-z0-9]+")


def normalize(text: str) -> str:
    """Lowercase, drop punctuation (apostrophes join: what's -> whats), collapse spaces."""
    return " ".join(_TOKEN.findall(str(text).lower().replace("'", "").replace("\u2019", "")))


def tokens(text: str) -> list[str]:
    return normalize(text).split()


def _base_words(text: str) -> set[str]:
    """Non-stopword tokens; a repeated token gets an occurrence mark ("3", "3#2") so that
    "3 times 3" and "3 plus 4" do not look alike (a multiset, as arithmetic needs)."""
    seen: Counter = Counter()
    out = set()
    for t in tokens(text):
        if t in STOPWORDS or t in FRAME_WORDS:
            continue
        seen[t] += 1
        out.add(t if seen[t] == 1 else f"{t}#{seen[t]}")
    return out


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
            out.update(normalize(v) for v in chk.get("values") or [])
        elif kind == "number" and chk.get("value") is not None:
            out.add(normalize(str(chk["value"])))
    out.discard("")
    return frozenset(out)


def _entries(items, source: str) -> list[dict]:
    """Uniform view of items (dicts with id/instruction/checks) or bare few-shot strings."""
    out = []
    for i, it in enumerate(items):
        if isinstance(it, str):
            out.append({"id": f"{source}-{i}", "instruction": it, "answers": frozenset(), "source": source})
        else:
            out.append({"id": str(it.get("id", f"{source}-{i}")), "instruction": str(it.get("instruction", "")),
                        "answers": answers_of(it), "source": it.get("source", source)})
    return out


class ContentModel:
    """Template words and IDF weights from a corpus of instructions."""

    def __init__(self, instructions: Iterable[str]):
        docs = [_base_words(t) for t in instructions]
        self.n = len(docs)
        self.df = Counter(w for d in docs for w in d)
        self.template_cutoff = max(TEMPLATE_MIN_DF, TEMPLATE_DF_FRACTION * self.n)
        self.template_words = {w for w, c in self.df.items()
                               if c >= self.template_cutoff and not w.split("#")[0].isdigit()}

    def content(self, text: str) -> frozenset:
        return frozenset(w for w in _base_words(text) if w not in self.template_words)

    def weight(self, w: str) -> float:
        # Smoothed IDF (as in scikit-learn): rare, fact-bearing words weigh more.
        return math.log((self.n + 1) / (self.df.get(w, 0) + 1)) + 1.0

    def similarity(self, a: frozenset, b: frozenset) -> tuple[float, float]:
        """(weighted containment of the smaller set, weighted Jaccard)."""
        if not a or not b:
            return 0.0, 0.0
        inter = sum(self.weight(w) for w in a & b)
        if inter == 0:
            return 0.0, 0.0
        wa, wb = sum(self.weight(w) for w in a), sum(self.weight(w) for w in b)
        return inter / min(wa, wb), inter / (wa + wb - inter)


def compare(eval_entries: list[dict], other_entries: list[dict], model: ContentModel,
            *, veto: bool = True, skip=None) -> list[dict]:
    """Flagged (eval, other) pairs; `skip(e, o)` can exclude pairs (e.g. the same item)."""
    exact_index = defaultdict(list)
    inverted = defaultdict(list)
    for j, o in enumerate(other_entries):
        o["_norm"] = normalize(o["instruction"])
        o["_content"] = model.content(o["instruction"])
        exact_index[o["_norm"]].append(j)
        for w in o["_content"]:
            inverted[w].append(j)
    flagged = []
    for e in eval_entries:
        norm, content = normalize(e["instruction"]), model.content(e["instruction"])
        seen = set()
        for j in exact_index.get(norm, []):
            o = other_entries[j]
            if skip and skip(e, o):
                continue
            seen.add(j)
            flagged.append(_pair(e, o, "exact", 1.0))
        candidates = {j for w in content for j in inverted[w]} - seen
        for j in sorted(candidates):
            o = other_entries[j]
            if skip and skip(e, o):
                continue
            cont, jac = model.similarity(content, o["_content"])
            if cont < NEAR_CONTAINMENT or jac < NEAR_JACCARD:
                continue
            if veto and e["answers"] and o["answers"] and not (e["answers"] & o["answers"]):
                continue
            flagged.append(_pair(e, o, "near", round(min(cont, 1.0) * 0.5 + jac * 0.5, 4),
                                 containment=round(cont, 4), jaccard=round(jac, 4)))
    return flagged


def _pair(e, o, kind, score, **extra) -> dict:
    return {"eval_id": e["id"], "other_id": o["id"], "source": o["source"], "kind": kind,
            "score": score, **extra, "eval_instruction": e["instruction"], "other_instruction": o["instruction"]}


def find_leaks(train_items: Sequence, eval_items: Sequence, fewshot_instructions: Sequence = (),
               reference: Sequence[str] | None = None) -> list[dict]:
    """Every eval item that duplicates or nearly duplicates a train item or a few-shot example.

    Items are dicts with `id`, `instruction` and (optionally) `checks`; few-shot examples may
    be plain strings (ids `fewshot-N`) or dicts. Template words and IDF come from the
    unique union of these instructions and `reference` (default: the shipped corpus).
    """
    train = _entries(train_items, "train")
    fewshot = _entries(fewshot_instructions, "fewshot")
    evals = _entries(eval_items, "eval")
    model = content_model([x["instruction"] for x in train + fewshot + evals], reference)
    return compare(evals, train + fewshot, model)


@lru_cache(maxsize=1)
def default_reference() -> tuple:
    """The shipped instruction corpus (both pools + few-shot bank): the document
    frequencies that decide template words. Using it for every check makes a sampled
    split get exactly the decisions the pool-level split was built with."""
    from .fewshot import all_fewshot_instructions
    from .tasks import build_all
    return tuple([it["instruction"] for it in build_all()] + list(all_fewshot_instructions()))


def content_model(instructions: Iterable[str], reference: Sequence[str] | None = None) -> ContentModel:
    """ContentModel over the unique (normalized) union of `instructions` and the reference
    corpus (default: the shipped pools and few-shot bank; pass () for the files alone)."""
    ref = default_reference() if reference is None else reference
    uniq = {}
    for t in list(ref) + list(instructions):
        uniq.setdefault(normalize(t), t)
    return ContentModel(uniq.values())


def thresholds() -> dict:
    return {"template_min_df": TEMPLATE_MIN_DF, "template_df_fraction": TEMPLATE_DF_FRACTION,
            "near_containment": NEAR_CONTAINMENT, "near_jaccard": NEAR_JACCARD}


def overlap_report(train_path, eval_path, leaks: list[dict], *, n_train: int | None = None,
                   n_eval: int | None = None, n_fewshot: int | None = None) -> dict:
    """The data/overlap_report.json contract: hashes of both files, method, thresholds, counts
    and every flagged pair (`flagged`)."""
    kinds = Counter(x["kind"] for x in leaks)
    return {
        "train_file": Path(train_path).name, "eval_file": Path(eval_path).name,
        "train_sha256": sha256_file(train_path), "eval_sha256": sha256_file(eval_path),
        "method": METHOD, "thresholds": thresholds(),
        "counts": {"train": n_train, "eval": n_eval, "fewshot": n_fewshot, "flagged": len(leaks),
                   "exact": kinds.get("exact", 0), "near": kinds.get("near", 0),
                   "eval_items_flagged": len({x["eval_id"] for x in leaks})},
        "clean": not leaks,
        "n_flagged": len(leaks),
        "flagged": leaks,  # every flagged pair (report.py and the 01 notebook read these keys)
    }


def find_split_leaks(train: list[dict], evals: list[dict]) -> tuple[list[dict], int]:
    """(leaks, size of the few-shot bank): eval items checked against train and every few-shot example."""
    from .fewshot import all_fewshot_instructions
    fewshot = all_fewshot_instructions()
    return find_leaks(train, evals, fewshot), len(fewshot)


def check_files(train_path, eval_path) -> tuple[list[dict], dict]:
    """Read both files, find leaks (few-shot bank included) and build the report."""
    train = read_jsonl(train_path, required=("instruction",))
    evals = read_jsonl(eval_path, required=("instruction",))
    leaks, n_fewshot = find_split_leaks(train, evals)
    return leaks, overlap_report(train_path, eval_path, leaks, n_train=len(train), n_eval=len(evals),
                                 n_fewshot=n_fewshot)


def verify_eval_set(run_paths) -> dict:
    """Refuse evaluation unless stage 01's files and report agree and show no leak."""
    rp = run_paths
    fix = "run stage 01 (cai run --stages 01) or pass the train file"
    if not Path(rp.train_instructions).exists():
        raise CaiError(f"{rp.train_instructions}: train instructions missing, so the eval set cannot be checked for leakage — {fix}")
    if not Path(rp.eval_instructions).exists():
        raise CaiError(f"{rp.eval_instructions}: eval instructions missing — {fix}")
    if not Path(rp.overlap_report).exists():
        raise CaiError(f"{rp.overlap_report}: overlap report missing — {fix}")
    report = read_json(rp.overlap_report)
    for key, path in (("train_sha256", rp.train_instructions), ("eval_sha256", rp.eval_instructions)):
        if report.get(key) != sha256_file(path):
            raise CaiError(f"{rp.overlap_report}: {key} does not match {Path(path).name} (the file changed after the check) — {fix}")
    if not report_is_clean(report):
        n = report.get("n_flagged", len(report.get("flagged") or []))
        raise CaiError(f"{rp.overlap_report}: the eval set leaks ({n} flagged pair(s)) — rebuild the split: {fix}", exit_code=2)
    return report


def report_is_clean(report: dict) -> bool:
    """The one rule for "this overlap report shows no leak" (stage 03 refuses otherwise, the gate fails)."""
    return report.get("clean") is True and not report.get("flagged") and not report.get("n_flagged")


def leakage_cli(train, eval, report=None) -> int:
    """`cai leakage`: 0 clean, 2 leak (pairs printed), 1 unreadable input (CaiError)."""
    import json
    for p in (train, eval):
        if not Path(p).is_file():
            raise CaiError(f"{p}: file not found — pass the train and eval JSONL files", exit_code=1)
    leaks, rep = check_files(train, eval)
    if report:
        write_json(report, rep)
    print(json.dumps({k: rep[k] for k in ("counts", "thresholds", "clean")}, indent=2))
    for x in leaks[:20]:
        print(f"LEAK {x['kind']} {x['eval_id']} ~ {x['other_id']} ({x['source']}, score {x['score']}): "
              f"{x['eval_instruction']!r} ~ {x['other_instruction']!r}")
    return 2 if leaks else 0
