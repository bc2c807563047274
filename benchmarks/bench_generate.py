"""Generation benchmark for the embedded Gemma 3 270M on this machine.

Measures: conversion time (with --convert, into a fresh cache), load time from the cache,
greedy tokens/s at several batch sizes on real starter-item instructions, the
batched-vs-batch-1 agreement rate, and the conversion probe continuation. Prints a table.

    .venv/bin/python benchmarks/bench_generate.py [--convert] [--threads 2] [--batch-sizes 1 8 16]

Tokens/s counts generated tokens (up to and including EOS) over the wall time of
model.generate calls; prompt encoding and decoding are included, model loading is not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def real_prompts(n: int) -> list[str]:
    """n raw instructions from the shipped starter items, spread over the item types."""
    from cai_lib.items import load_items, starter_items_path

    items = load_items(starter_items_path())
    by_type: dict[str, list[dict]] = {}
    for it in items:
        by_type.setdefault(it["type"], []).append(it)
    out: list[str] = []
    k = 0
    while len(out) < n and any(k < len(v) for v in by_type.values()):
        for t in sorted(by_type):
            if k < len(by_type[t]) and len(out) < n:
                out.append(by_type[t][k]["instruction"])
        k += 1
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--convert", action="store_true", help="time a conversion into a fresh temporary cache")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    from cai_lib import embedded
    from cai_lib.generate import generate, throughput
    from cai_lib.models import load_base

    res: dict = {"load_average_start": os.getloadavg()[0], "threads": args.threads, "machine": platform.processor() or platform.machine(),
                 "cpu_count": os.cpu_count(), "torch": torch.__version__}
    import transformers
    res["transformers"] = transformers.__version__

    if args.convert:
        tmp = tempfile.mkdtemp(prefix="cai-bench-cache-")
        os.environ["CAI_MODEL_CACHE"] = tmp
        t0, c0 = time.perf_counter(), time.process_time()
        embedded.embedded_model_dir()
        res["convert_s"], res["convert_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0

    t0 = time.perf_counter()
    folder = embedded.embedded_model_dir()
    res["cache_lookup_s"] = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    loaded = load_base("embedded:gemma-3-270m")
    res["load_s"], res["load_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    marker = embedded.conversion_info(folder) or {}
    res["conversion_probe"] = marker.get("conversion_probe", {}).get("continuation")
    res["marker_convert_s"] = marker.get("convert_seconds")

    prompts = real_prompts(args.n_prompts)
    runs = {}
    for bs in args.batch_sizes:
        c0 = time.process_time()
        recs = generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                        batch_size=bs, progress=False)
        cpu = time.process_time() - c0
        runs[bs] = recs
        # CPU seconds as well as wall seconds: on a shared machine wall time includes waiting
        # for other processes; tokens per CPU-second / threads approximates an idle machine.
        res[f"bs{bs}"] = {**throughput(recs), "cpu_seconds": cpu,
                          "tokens_per_cpu_s": sum(r["new_tokens"] for r in recs) / cpu if cpu else float("nan")}
    ref = runs.get(1)
    if ref is not None:
        for bs, recs in runs.items():
            if bs != 1:
                agree = sum(a["response"] == b["response"] for a, b in zip(ref, recs))
                res[f"agree_bs{bs}_vs_bs1"] = {"agree": agree, "n": len(ref), "rate": agree / len(ref)}
    res["finish_reasons"] = {bs: {r: sum(x["finish_reason"] == r for x in recs) for r in ("eos", "length", "stop")}
                             for bs, recs in runs.items()}
    res["samples"] = [{"prompt": p, "response": r["response"], "finish_reason": r["finish_reason"]}
                      for p, r in list(zip(prompts, runs[args.batch_sizes[0]]))[:4]]

    res["load_average_end"] = os.getloadavg()[0]
    rows = [("transformers / torch / threads", f"{res['transformers']} / {res['torch']} / {args.threads}"),
            ("1-min load average start / end (cores)", f"{res['load_average_start']:.1f} / {res['load_average_end']:.1f} ({os.cpu_count()})")]
    if "convert_s" in res:
        rows.append(("conversion (fresh cache, incl. conversion probe)", f"{res['convert_s']:.1f} s wall, {res['convert_cpu_s']:.1f} CPU-s"))
    rows.append(("load from cache (load_base)", f"{res['load_s']:.1f} s wall, {res['load_cpu_s']:.1f} CPU-s"))
    for bs in args.batch_sizes:
        t = res[f"bs{bs}"]
        rows.append((f"greedy batch {bs}: {t['n']} prompts x {args.max_new_tokens} new",
                     f"{t['tokens_per_s']:.1f} tok/s wall ({t['new_tokens']} tok, {t['seconds']:.1f} s); "
                     f"{t['tokens_per_cpu_s']:.1f} tok per CPU-s"))
    for bs in args.batch_sizes:
        if f"agree_bs{bs}_vs_bs1" in res:
            a = res[f"agree_bs{bs}_vs_bs1"]
            rows.append((f"batch {bs} vs batch 1 identical", f"{a['agree']}/{a['n']} ({a['rate']:.0%})"))
    rows.append(("conversion probe 'The capital of France is'", repr(res["conversion_probe"])))
    w = max(len(r[0]) for r in rows)
    print("\n".join(f"{k.ljust(w)} | {v}" for k, v in rows))
    print("finish reasons by batch size:", json.dumps(res["finish_reasons"]))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
