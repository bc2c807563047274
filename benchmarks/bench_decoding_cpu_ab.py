"""Interleaved dynamic vs static KV cache on CPU at the cpu-quick settings (batch 16, 48 new tokens).

Interleaved (dynamic, static, dynamic, static) so drifting load on a shared machine hits both;
CPU seconds are recorded next to wall seconds for the same reason.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_decoding_cpu_ab.py out.json
"""
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch
torch.set_num_threads(2)
from bench_decoding import eval_items
from cai_lib.generate import generate
from cai_lib.models import load_base
L = load_base("embedded:gemma-3-270m")
prompts = [it["instruction"] for it in eval_items(16)]
out = []
for rep in range(2):
    for cache in ("dynamic", "static"):
        info = {}
        la = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        recs = generate(L.model, L.tokenizer, prompts, max_new_tokens=48, batch_size=16, progress=False, cache=cache, info=info)
        w, c = time.perf_counter() - t0, time.process_time() - c0
        r = {"rep": rep, "cache": cache, "wall_s": round(w, 1), "cpu_s": round(c, 1), "steps": info["steps"],
             "new_tokens": info["new_tokens"], "row_step_use": info["row_step_use"], "load_avg": round(la, 1),
             "finish": {k: sum(x["finish_reason"] == k for x in recs) for k in ("eos", "length")},
             "responses": [x["response"] for x in recs]}
        out.append(r)
        print({k: v for k, v in r.items() if k != "responses"}, flush=True)
for dyn, sta in zip(out[0::2], out[1::2]):  # same rep: dynamic then static
    sta["identical_to_dynamic_same_rep"] = sum(a == b for a, b in zip(dyn["responses"], sta["responses"]))
for r in out:
    r["responses"] = r["responses"][:3]  # identical counts are printed; keep the JSON small
json.dump(out, open(sys.argv[1] if len(sys.argv) > 1 else "bench_decoding_cpu_ab.json", "w"), indent=1)
