"""Stage 01's generation steps, resumable: framed answers, critiques, revisions, raw
continuations and sampled answers, stored by (item_id, step) in data/generations.jsonl.

Each batch's rows are appended (fsync'd whole lines); a rerun skips finished keys. Batches
are fixed slices of each step's ordered item list, so a resumed run feeds the model the
same batches as an uninterrupted one (left padding can change greedy output with batch
composition). Few-shot examples come from a per-(item, step) seeded RNG, so rotation does
not depend on order or resume either; their ids are stored per row for the leakage guard.
"""

from __future__ import annotations

import hashlib
import time
from typing import Sequence

from . import prompts
from .errors import CaiError
from .jsonl import append_jsonl, read_jsonl, repair_torn_tail
from .scoring import score_record

GEN_FIELDS = ("item_id", "step", "prompt", "response", "finish_reason")


def cut_answer(row: dict, step: str) -> tuple[str, str]:
    """(answer text, finish_reason) of a framed generation, cut at the frame's stops."""
    text, hit = prompts.cut_at_stop(row["response"], prompts.stop_strings(step))
    fr = "stop" if hit or row["finish_reason"] == "stop" else row["finish_reason"]
    return text.strip(), fr


def score_answer(item: dict, text: str, finish_reason: str) -> dict:
    rec = {k: item[k] for k in ("id", "type", "instruction", "checks")}
    rec.update(response=text, finish_reason=finish_reason)
    s = score_record(rec)
    return {"strict": bool(s["strict"]), "loose": bool(s["loose"]), "form": bool(s["form"]),
            "failures": list(s.get("failures", []))}


class GenerationStore:
    """Rows of data/generations.jsonl by (item_id, step); appends survive interruption."""

    def __init__(self, path):
        self.path = path
        self.rows: dict[tuple[str, str], dict] = {}
        if path.exists():
            repair_torn_tail(path)  # a kill mid-append leaves a partial last line
            for row in read_jsonl(path, required=GEN_FIELDS, tolerate_torn_tail=True):
                self.rows.setdefault((row["item_id"], row["step"]), row)

    def get(self, item_id: str, step: str) -> dict | None:
        return self.rows.get((item_id, step))

    def add(self, rows: list[dict]) -> None:
        append_jsonl(self.path, rows)
        for row in rows:
            self.rows[(row["item_id"], row["step"])] = row


def default_generate(*args, **kwargs):
    from .generate import generate  # lazy: torch-heavy module
    return generate(*args, **kwargs)


def default_rotate(*args, **kwargs):
    from .fewshot import rotate
    return rotate(*args, **kwargs)


def default_sample(*args, **kwargs):
    from .sampling import sample_generate  # lazy: torch-heavy module
    return sample_generate(*args, **kwargs)


def step_prompt(item: dict, step: str, store: GenerationStore, k: int, seed: int, rotate_fn) -> tuple[str, list[str]]:
    """(prompt, few-shot ids) for one item's step; earlier steps' rows come from `store`."""
    if step == "raw":
        return prompts.format_prompt(item["instruction"], "raw"), []
    examples = prompts.rotate_excluding(rotate_fn, item["type"], step, k,
                                        prompts.item_rng(seed, item["id"], step), item["instruction"])
    if step == "response":
        return prompts.response_frame(item["instruction"], examples), prompts.fewshot_ids(examples)
    answer, _ = cut_answer(store.get(item["id"], "response"), "response")
    if step == "critique":
        return prompts.critique_frame(item["instruction"], answer, examples), prompts.fewshot_ids(examples)
    critique, _ = cut_answer(store.get(item["id"], "critique"), "critique")
    return prompts.revision_frame(item["instruction"], answer, critique, examples), prompts.fewshot_ids(examples)


def run_step(step, items, store, *, loaded, gen, rotate_fn, cfg, max_new_tokens, progress, timing):
    stops = prompts.stop_strings(step)
    bs = max(1, int(cfg.gen_batch_size))
    t = timing.setdefault(step, {"generated": 0, "resumed": 0, "new_tokens": 0, "wall_s": 0.0})
    requests = []
    for it in items:
        prompt, ids = step_prompt(it, step, store, cfg.n_fewshot, cfg.seed, rotate_fn)
        have = store.get(it["id"], step)
        if have is not None and (have["prompt"] != prompt or have.get("max_new_tokens") != max_new_tokens):
            raise CaiError(
                f"{store.path}: the stored {step!r} generation for item {it['id']!r} was made with a different "
                "prompt or max_new_tokens — delete that file (or use a new --run-id) to regenerate"
            )
        requests.append((it, prompt, ids))
    # Longest prompts first (less padding per batch, as generate() does within a call);
    # the order and the batch slices depend only on the prompts, so a resumed run sees
    # the same batches as an uninterrupted one.
    order = sorted(range(len(requests)), key=lambda i: (-len(requests[i][1]), i))
    chunks = [[requests[i] for i in order[j:j + bs]] for j in range(0, len(order), bs)]
    bar = None
    if progress:
        from tqdm import tqdm  # text bars: they render in the executed notebook and its HTML
        bar = tqdm(total=len(chunks), desc=f"pairs:{step}")
    try:
        for chunk in chunks:
            todo = [r for r in chunk if store.get(r[0]["id"], step) is None]
            t["resumed"] += len(chunk) - len(todo)
            if todo:
                t0 = time.perf_counter()
                outs = gen(getattr(loaded, "model", None), getattr(loaded, "tokenizer", None), [p for _, p, _ in todo],
                           max_new_tokens=max_new_tokens, batch_size=bs, stop=stops or None,
                           progress=False, desc=f"pairs:{step}")
                t["wall_s"] += time.perf_counter() - t0
                if len(outs) != len(todo):
                    raise CaiError(f"generate returned {len(outs)} records for {len(todo)} prompts — a bug in generate")
                rows = []
                for (it, prompt, ids), out in zip(todo, outs):
                    rows.append({
                        "item_id": it["id"], "step": step, "type": it["type"], "prompt": prompt,
                        "response": out["response"], "finish_reason": out["finish_reason"],
                        "prompt_tokens": out.get("prompt_tokens"), "new_tokens": out.get("new_tokens"),
                        "seconds": out.get("seconds"), "fewshot_ids": ids,
                        "max_new_tokens": max_new_tokens, "stop": stops,
                    })
                    t["generated"] += 1
                    t["new_tokens"] += int(out.get("new_tokens") or 0)
                store.add(rows)  # whole batch appended at once: resume never splits a batch
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def slice_seed(seed: int, ids: Sequence[str]) -> int:
    """A seed for one slice of items: depends on the run seed and the slice's ids only."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{','.join(ids)}".encode()).digest()[:4], "big")


def prompts_per_sample_call(cfg) -> int:
    """Prompts in one sampling call: its rows (prompts x pair_sc_k) fit in gen_batch_size."""
    return max(1, int(cfg.gen_batch_size) // int(cfg.pair_sc_k))


def run_sample_step(items, store, *, loaded, sample_fn, cfg, max_new_tokens, rotate_fn, progress, timing):
    """k sampled answers per item to its response-step prompt, stored as one row per item."""
    step, k, temp = "sample", int(cfg.pair_sc_k), float(cfg.pair_sc_temperature)
    stops = prompts.stop_strings("response")
    t = timing.setdefault(step, {"generated": 0, "resumed": 0, "new_tokens": 0, "wall_s": 0.0})
    requests = []
    for it in items:
        prompt, _ = step_prompt(it, "response", store, cfg.n_fewshot, cfg.seed, rotate_fn)
        have = store.get(it["id"], step)
        if have is not None and (have["prompt"] != prompt or have.get("max_new_tokens") != max_new_tokens
                                 or have.get("k") != k or have.get("temperature") != temp):
            raise CaiError(f"{store.path}: the stored sampled answers for item {it['id']!r} were made with another "
                           "prompt, max_new_tokens, pair_sc_k or pair_sc_temperature — delete that file (or use a "
                           "new --run-id) to regenerate")
        requests.append((it, prompt))
    per_call = prompts_per_sample_call(cfg)
    order = sorted(range(len(requests)), key=lambda i: (-len(requests[i][1]), i))
    chunks = [[requests[i] for i in order[j:j + per_call]] for j in range(0, len(order), per_call)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(chunks), desc="pairs:sample")
    try:
        for chunk in chunks:
            if all(store.get(it["id"], step) is not None for it, _ in chunk):
                t["resumed"] += len(chunk)
            else:  # a chunk is stored whole, so a resumed run never re-draws part of one
                seed = slice_seed(cfg.seed, [it["id"] for it, _ in chunk])
                t0 = time.perf_counter()
                outs = sample_fn(getattr(loaded, "model", None), getattr(loaded, "tokenizer", None),
                                 [p for _, p in chunk], k=k, temperature=temp, max_new_tokens=max_new_tokens,
                                 stop=stops, seed=seed)
                t["wall_s"] += time.perf_counter() - t0
                if len(outs) != len(chunk) or any(len(o) != k for o in outs):
                    raise CaiError("sample_generate returned the wrong number of samples — a bug in sampling")
                rows = []
                for (it, prompt), samples in zip(chunk, outs):
                    rows.append({"item_id": it["id"], "step": step, "type": it["type"], "prompt": prompt,
                                 "response": "", "finish_reason": "", "samples": samples, "k": k,
                                 "temperature": temp, "seed": seed, "max_new_tokens": max_new_tokens, "stop": stops})
                    t["generated"] += 1
                    t["new_tokens"] += sum(int(x.get("new_tokens") or 0) for x in samples)
                store.add(rows)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
