"""The train/eval split: topic pools, the persistent eval set, its overlap report and its
verification.

The split is by topic, deterministic (a hash of the topic group), so every phrasing of one
fact lands on the same side and no eval question is a rephrasing of a train question.
Topics that the leakage detector links (two tables asking about the same entity, e.g. "Is
Paris in France?" and "What is the capital of France?") are merged into one group before
splitting, so the split is leak-free by construction and `write_split` double-checks the
sampled files. Every check here judges against the shipped instruction corpus (both pools
and the few-shot bank), the reference the pools were split with; cai_lib.leakage is the
detector itself.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from . import leakage
from .errors import CaiError
from .fewshot import all_fewshot_instructions, fewshot_topics
from .items import load_items, sample_items
from .jsonl import read_json, read_jsonl, sha256_file, write_json, write_jsonl
from .tasks import TYPES, build_all, stable_hash

EVAL_PERCENT = 25  # share of topic groups held out for evaluation
SPLIT_SALT = "cai-split-v1"


@lru_cache(maxsize=1)
def shipped_corpus() -> tuple:
    """The shipped instruction corpus (both pools + few-shot bank): the document
    frequencies that decide template words. Using it for every check makes a sampled
    split get exactly the decisions the pool-level split was built with."""
    return tuple([it["instruction"] for it in build_all()] + list(all_fewshot_instructions()))


def find_leaks(train_items: Sequence, eval_items: Sequence, fewshot_instructions: Sequence = (),
               reference: Sequence[str] | None = None) -> list[dict]:
    """leakage.find_leaks judged against `reference` (default: the shipped corpus)."""
    return leakage.find_leaks(train_items, eval_items, fewshot_instructions,
                              reference=shipped_corpus() if reference is None else reference)


# ---- the split policy ------------------------------------------------------------------------

def topic_groups(items: list[dict]) -> dict[str, str]:
    """topic -> group key. Topics the leakage detector links (the guard's own rule) are
    merged, so facts it would call the same land on the same side."""
    parent = {it["topic"]: it["topic"] for it in items}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    ents = leakage.entries([{"id": str(i), "instruction": it["instruction"], "checks": it["checks"]} for i, it in enumerate(items)], "pool")
    for e, it in zip(ents, items):
        e["topic"] = it["topic"]
    model = leakage.content_model([it["instruction"] for it in items], shipped_corpus())
    for pair in leakage.compare(ents, ents, model, skip=lambda e, o: e["topic"] == o["topic"]):
        a, b = find(items[int(pair["eval_id"])]["topic"]), find(items[int(pair["other_id"])]["topic"])
        if a != b:
            parent[max(a, b)] = min(a, b)
    return {t: find(t) for t in parent}


def is_eval_group(group: str, forced_train: frozenset = frozenset()) -> bool:
    if group in forced_train:
        return False
    return stable_hash(SPLIT_SALT, group) % 100 < EVAL_PERCENT


@lru_cache(maxsize=1)
def _pools() -> tuple[tuple, tuple]:
    items = build_all()
    groups = topic_groups(items)
    # Few-shot examples' topics must never be eval topics: their groups go to train, and
    # so do groups of pool items the guard links to a few-shot instruction (few-shot
    # strings carry no checks, so the answer veto cannot separate them).
    forced = {groups.get(t, t) for t in fewshot_topics()}
    pool_view = [{"id": str(i), "instruction": it["instruction"], "checks": it["checks"]} for i, it in enumerate(items)]
    for leak in find_leaks([], pool_view, all_fewshot_instructions()):
        forced.add(groups[items[int(leak["eval_id"])]["topic"]])
    forced = frozenset(forced)
    train, evals = [], []
    for it in items:
        ev = is_eval_group(groups[it["topic"]], forced)
        it = dict(it, topic_group=groups[it["topic"]])
        it["id"] = f"{it['type']}-{'e' if ev else 't'}{hashlib.sha256(it['instruction'].encode()).hexdigest()[:8]}"
        (evals if ev else train).append(it)
    key = lambda x: (TYPES.index(x["type"]), x["id"])
    return tuple(sorted(train, key=key)), tuple(sorted(evals, key=key))


def _order(it: dict) -> dict:
    return {k: it[k] for k in ("id", "type", "instruction", "checks", "topic", "topic_group", "source") if k in it}


def train_pool() -> list[dict]:
    return [_order(dict(x)) for x in _pools()[0]]


def eval_pool() -> list[dict]:
    return [_order(dict(x)) for x in _pools()[1]]


def write_split(run_paths, cfg):
    """Write the run's train/eval instruction files and the overlap report.

    The eval file is persistent: if it exists it is kept byte-identical (re-running stage 01
    or changing the train sample never changes what a run is evaluated on). The leakage
    check runs before anything is written; a leaking split raises CaiError (exit 2) and
    leaves the files as they were.
    """
    rp = run_paths
    train = sample_items(train_pool(), cfg.n_train_items, cfg.seed)
    keep_eval = Path(rp.eval_instructions).exists()
    evals = load_items(rp.eval_instructions) if keep_eval else sample_items(eval_pool(), cfg.n_eval_items, cfg.seed)
    leaks, n_fewshot = find_split_leaks(train, evals)
    if leaks:
        x = leaks[0]
        raise CaiError(f"{rp.eval_instructions}: {len(leaks)} eval item(s) leak, e.g. {x['eval_id']} ~ {x['other_id']} "
                       f"({x['kind']}) — delete the eval file to rebuild it from the eval pool, or run `cai leakage` for the list",
                       exit_code=2)
    write_jsonl(rp.train_instructions, train)
    if not keep_eval:
        write_jsonl(rp.eval_instructions, evals)
    report = overlap_report(rp.train_instructions, rp.eval_instructions, leaks,
                            n_train=len(train), n_eval=len(evals), n_fewshot=n_fewshot)
    report["eval_kept_from_previous_run"] = keep_eval
    write_json(rp.overlap_report, report)
    return train, evals, report


# ---- the overlap report, its verification and `cai leakage` ----------------------------------

def overlap_report(train_path, eval_path, leaks: list[dict], *, n_train: int | None = None,
                   n_eval: int | None = None, n_fewshot: int | None = None) -> dict:
    """The data/overlap_report.json contract: hashes of both files, method, thresholds, counts
    and every flagged pair (`flagged`)."""
    kinds = Counter(x["kind"] for x in leaks)
    return {
        "train_file": Path(train_path).name, "eval_file": Path(eval_path).name,
        "train_sha256": sha256_file(train_path), "eval_sha256": sha256_file(eval_path),
        "method": leakage.METHOD, "thresholds": leakage.thresholds(),
        "counts": {"train": n_train, "eval": n_eval, "fewshot": n_fewshot, "flagged": len(leaks),
                   "exact": kinds.get("exact", 0), "near": kinds.get("near", 0),
                   "eval_items_flagged": len({x["eval_id"] for x in leaks})},
        "clean": not leaks,
        "n_flagged": len(leaks),
        "flagged": leaks,  # every flagged pair (report.py and the 01 notebook read these keys)
    }


def find_split_leaks(train: list[dict], evals: list[dict]) -> tuple[list[dict], int]:
    """(leaks, size of the few-shot bank): eval items checked against train and every few-shot example."""
    fewshot = all_fewshot_instructions()
    return find_leaks(train, evals, fewshot), len(fewshot)


def _read_items(path, role: str) -> list[dict]:
    """A train/eval JSONL file for `cai leakage`: non-empty, every instruction a non-blank string."""
    lines: list[int] = []
    rows = read_jsonl(path, required=("instruction",), line_numbers=lines)
    if not rows:
        raise CaiError(f"{path}: the {role} file holds no items — an empty {role} set cannot be checked "
                       f"for leakage; pass the JSONL file with the {role} instructions")
    for row, line in zip(rows, lines):
        ins = row["instruction"]
        if not isinstance(ins, str) or not ins.strip():
            raise CaiError(f"{path}:{line}: field 'instruction' is {'blank' if isinstance(ins, str) else type(ins).__name__}"
                           f" — every item needs the instruction text")
    return rows


def check_files(train_path, eval_path) -> tuple[list[dict], dict]:
    """Read both files, find leaks (few-shot bank included) and build the report."""
    train = _read_items(train_path, "train")
    evals = _read_items(eval_path, "eval")
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


def _check_report_path(report, inputs) -> Path:
    """`--report` must name a file we may write, not a folder or one of the inputs."""
    path = Path(report)
    if path.is_dir():
        raise CaiError(f"{path}: --report is a folder — pass a file path such as {path / 'overlap_report.json'}")
    if any(path.exists() and Path(p).exists() and path.resolve() == Path(p).resolve() for p in inputs):
        raise CaiError(f"{path}: --report would overwrite an input file — pass another path")
    parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise CaiError(f"{path}: --report cannot be written ({parent} is a file, not a folder) — pass a writable path")
    return path


def _write_report(path: Path, rep: dict) -> None:
    try:
        write_json(path, rep)
    except OSError as exc:
        raise CaiError(f"{path}: cannot write the report ({exc.strerror or exc}) — pass a writable file path") from None


def leakage_cli(train, eval, report=None) -> int:
    """`cai leakage`: 0 clean, 2 leak (pairs printed), 1 unreadable input (CaiError)."""
    for p in (train, eval):
        if not Path(p).is_file():
            raise CaiError(f"{p}: file not found — pass the train and eval JSONL files", exit_code=1)
    report_path = _check_report_path(report, (train, eval)) if report else None
    leaks, rep = check_files(train, eval)
    if report_path is not None:
        _write_report(report_path, rep)
    print(json.dumps({k: rep[k] for k in ("counts", "thresholds", "clean")}, indent=2))
    for x in leaks[:20]:
        print(f"LEAK {x['kind']} {x['eval_id']} ~ {x['other_id']} ({x['source']}, score {x['score']}): "
              f"{x['eval_instruction']!r} ~ {x['other_instruction']!r}")
    return 2 if leaks else 0
