"""Stage 00: the base model on raw instructions, in several prompt formats.

Every format gets the same items, greedy decoding and no stop strings, so the only thing
that changes between formats is the cue around the instruction. "raw" is exactly what
stage 03 shows both models; the other formats measure how much the base model already
knows how to do once it is told where an answer goes (the lesson of the system this
replaces: its "lift" was a format cue plus a length heuristic). The contamination
sentinels run here too, on the raw instruction, as evidence for the reader.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from functools import partial
from typing import Callable

from . import generate as gen
from . import prompts, scoring
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


# --------------------------------------------------------------------------- contamination sentinels

# Instructions a pure base model tends to continue rather than obey: a base model that
# *obeys* them hints at instruction-tuning contamination. Items follow the design's
# eval-item schema, so the scorer judges them like any other item.
SENTINEL_PROMPTS: list[dict] = [
    {"id": "sentinel-piglatin", "type": "response",
     "instruction": "Translate to Pig Latin: hello world",
     "checks": [{"kind": "contains_all", "values": ["ellohay", "orldway"]}]},
    {"id": "sentinel-primes", "type": "generation",
     "instruction": "List three prime numbers:",
     "checks": [{"kind": "items", "n": 3},
                {"kind": "regex", "pattern": r"\b(2|3|5|7|11|13|17|19|23|29)\b"}]},
    {"id": "sentinel-oneword", "type": "qa",
     "instruction": "Answer with one word: What color is the sky on a clear day?",
     "checks": [{"kind": "contains_any", "values": ["blue"]}, {"kind": "max_words", "n": 2}]},
    {"id": "sentinel-yesno", "type": "qa",
     "instruction": "Respond with yes or no: Is the sun a star?",
     "checks": [{"kind": "yes_no", "value": "yes"}, {"kind": "max_words", "n": 3}]},
    {"id": "sentinel-count", "type": "completion",
     "instruction": "Count from one to five, separated by commas:",
     "checks": [{"kind": "regex", "pattern": r"(?i)(1|one)\W+(2|two)\W+(3|three)\W+(4|four)\W+(5|five)"},
                {"kind": "max_words", "n": 8}]},
    {"id": "sentinel-sentence", "type": "generation",
     "instruction": "Write exactly one sentence about the ocean.",
     "checks": [{"kind": "sentences", "n": 1}, {"kind": "contains_any", "values": ["ocean", "sea"]}]},
]


def run_sentinels(loaded, generate_fn: Callable | None = None, *, max_new_tokens: int = 48,
                  format_fn: Callable[[str], str] | None = None, batch_size: int = 8,
                  progress: bool = False) -> list[dict]:
    """Generate on SENTINEL_PROMPTS in the evaluation format (raw instruction by default).

    Returns response records (item + prompt + response + finish_reason + counts) for the
    scorer and the report. They are evidence about the base model, not a verdict on the
    guard: a base model that *obeys* them is a hint of instruction-tuning contamination.
    """
    generate_fn = generate_fn or gen.generate
    fmt = format_fn or (lambda s: s)
    texts = [fmt(it["instruction"]) for it in SENTINEL_PROMPTS]
    outs = generate_fn(loaded.model, loaded.tokenizer, texts, max_new_tokens=max_new_tokens,
                       batch_size=batch_size, stop=None, progress=progress, desc="sentinels")
    return [{**it, "prompt": p, **o} for it, p, o in zip(SENTINEL_PROMPTS, texts, outs)]


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
                        progress=progress, desc="baseline", cache=cfg.gen_cache)
    seconds = time.time() - t0
    records = scoring.score_records([{**r, **o} for r, o in zip(rows, outs)])
    write_jsonl(paths.baseline, records)

    t_sent = time.time()
    sentinel_outs = run_sentinels(loaded, partial(gen.generate, cache=cfg.gen_cache),
                                  max_new_tokens=cfg.baseline_max_new_tokens,
                                  batch_size=cfg.gen_batch_size, progress=False)
    sentinels = scoring.score_records([{**r, "format": "raw"} for r in sentinel_outs])
    write_jsonl(paths.results / "sentinels.jsonl", sentinels)

    raw = [r["prompt"] for r in rows if r["format"] == "raw"][: cfg.determinism_sample]
    t_det = time.time()
    determinism = gen.determinism_check(loaded.model, loaded.tokenizer, raw,
                                        max_new_tokens=cfg.baseline_max_new_tokens,
                                        batch_size=cfg.gen_batch_size, cache=cfg.gen_cache) if raw else None
    # where stage 00's time goes (issue 13): the baseline, the sentinels, the batch-1 check
    timing = {"baseline_seconds": round(seconds, 2), "sentinels_seconds": round(t_det - t_sent, 2),
              "determinism_seconds": round(time.time() - t_det, 2)}
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
        "timing": timing,
        "throughput": {"new_tokens": new_tokens, "seconds": round(seconds, 2),
                       "tokens_per_s": round(new_tokens / seconds, 2) if seconds else None,
                       "batch_size": cfg.gen_batch_size},
    }
    write_json(paths.baseline_summary, summary)
    return summary


def load_records(paths) -> list[dict]:
    from .jsonl import read_jsonl
    return read_jsonl(paths.baseline)
