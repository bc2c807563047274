"""Stage 00: the base model on raw instructions, in several prompt formats.

Every format gets the same items, greedy decoding and no stop strings, so the only thing
that changes between formats is the cue around the instruction. "raw" is exactly what
stage 03 shows both models; the other formats measure how much the base model already
knows how to do once it is told where an answer goes (the lesson of the system this
replaces: its "lift" was a format cue plus a length heuristic).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict

from . import generate as gen
from . import guard, prompts, scoring
from .items import load_items, starter_items_path
from .jsonl import write_json, write_jsonl


def select_items(items: list[dict], n: int, seed: int) -> list[dict]:
    """n items balanced over types (seeded); n <= 0 or n >= len(items) keeps all."""
    if n <= 0 or n >= len(items):
        return list(items)
    by_type: dict[str, list] = defaultdict(list)
    for it in items:
        by_type[it["type"]].append(it)
    rng = random.Random(seed)
    for group in by_type.values():
        rng.shuffle(group)
    picked, types = [], sorted(by_type)
    while len(picked) < n:  # round-robin keeps types balanced when n is not a multiple
        for t in types:
            if by_type[t] and len(picked) < n:
                picked.append(by_type[t].pop())
    return sorted(picked, key=lambda it: it["id"])


def build_prompts(items: list[dict], formats: list[str], seed: int, n_fewshot: int = 3) -> list[dict]:
    rows = []
    for fmt in formats:
        rng = random.Random(seed)
        for it in items:
            prompt = prompts.baseline_prompt(it, fmt, rng=rng, k=n_fewshot)
            rows.append({**it, "format": fmt, "prompt": prompt})
    return rows


def run_baseline(loaded, cfg, paths, *, progress: bool = True) -> dict:
    items_path = cfg.baseline_items or starter_items_path()
    items = select_items(load_items(items_path), cfg.baseline_n_items, cfg.seed)
    rows = build_prompts(items, list(cfg.baseline_formats), cfg.seed, cfg.n_fewshot)
    t0 = time.time()
    outs = gen.generate(loaded.model, loaded.tokenizer, [r["prompt"] for r in rows],
                        max_new_tokens=cfg.baseline_max_new_tokens, batch_size=cfg.gen_batch_size,
                        progress=progress, desc="baseline")
    seconds = time.time() - t0
    records = scoring.score_records([{**r, **o} for r, o in zip(rows, outs)])
    write_jsonl(paths.baseline, records)

    sentinel_items = [dict(s) for s in guard.SENTINEL_PROMPTS]
    s_outs = gen.generate(loaded.model, loaded.tokenizer, [s["instruction"] for s in sentinel_items],
                          max_new_tokens=cfg.baseline_max_new_tokens, batch_size=cfg.gen_batch_size,
                          progress=False, desc="sentinels")
    sentinels = scoring.score_records([{**s, "format": "raw", **o} for s, o in zip(sentinel_items, s_outs)])
    write_jsonl(paths.results / "sentinels.jsonl", sentinels)

    raw = [r["prompt"] for r in rows if r["format"] == "raw"][: cfg.determinism_sample]
    determinism = gen.determinism_check(loaded.model, loaded.tokenizer, raw,
                                        max_new_tokens=cfg.baseline_max_new_tokens,
                                        batch_size=cfg.gen_batch_size) if raw else None
    new_tokens = sum(o["new_tokens"] for o in outs)
    summary = {
        "items_file": str(items_path),
        "n_items": len(items),
        "formats": list(cfg.baseline_formats),
        "decoding": {"do_sample": False, "max_new_tokens": cfg.baseline_max_new_tokens,
                     "batch_size": cfg.gen_batch_size, "stop_strings": None},
        "by_format": {fmt: scoring.summarize([r for r in records if r["format"] == fmt])
                      for fmt in cfg.baseline_formats},
        "sentinels": [{k: s.get(k) for k in ("id", "instruction", "response", "finish_reason", "strict",
                                              "loose", "form", "failures")} for s in sentinels],
        "determinism": determinism,
        "throughput": {"new_tokens": new_tokens, "seconds": round(seconds, 2),
                       "tokens_per_s": round(new_tokens / seconds, 2) if seconds else None,
                       "batch_size": cfg.gen_batch_size},
    }
    write_json(paths.baseline_summary, summary)
    return summary


def load_records(paths) -> list[dict]:
    from .jsonl import read_jsonl
    return read_jsonl(paths.baseline)
