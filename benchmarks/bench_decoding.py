"""Decoding speed of `cai_lib.generate` per KV cache kind, batch size and weights, in one invocation.

For each weight setting (--quantizations) and cache kind (--caches) and batch size:
  first_call_s   the first generate() call at that shape (on CUDA + static: includes compilation)
  ms_per_step    wall time / decoding steps of a second, timed call
  tokens_per_s   kept tokens (up to and including EOS) / wall time
  row_tokens_per_s  rows x steps / wall time (every row paid every step: the "all rows to N" figure)
  row_step_use   kept tokens / row-steps (what rows that finished early but stayed in the batch cost)
and per cache kind a comparability certificate (cai_lib.generate.comparability_certificate):
batched vs batch-1 decoding of the same eval items with the same weights and cache kind,
identical-count and strict/loose/form rates of each.

Prompts are the run's held-out raw instructions (the type-balanced sample stage 01 draws).

    python benchmarks/bench_decoding.py --json out.json                      # embedded 270M, this device
    python benchmarks/bench_decoding.py --shape qwen7b --quantizations 4bit  # random-weight 7B shape (GPU)

Quantization "4bit-compiled" is an experiment, not a package path: the 4-bit model with
transformers' "not compileable" flag on the bitsandbytes quantizer overridden, so the static
cache's decoding step is compiled (bitsandbytes >= 0.46 registers its kernels as torch ops).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))


def eval_items(n: int) -> list[dict]:
    from cai_lib import split
    from cai_lib.items import sample_items
    return sample_items(split.eval_pool(), n, 0)


def _sync():
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def force_compileable(model) -> None:
    """The "4bit-compiled" experiment: let transformers compile a bitsandbytes model."""
    q = getattr(model, "hf_quantizer", None)
    if q is not None:
        type(q).is_compileable = property(lambda self: True)


def load(args, quantization: str):
    """(model, tokenizer, description) for the embedded/folder model or a random-weight shape."""
    if quantization == "4bit-compiled":
        model, tok, desc = load(args, "4bit")
        force_compileable(model)
        return model, tok, desc
    import torch
    if args.shape:
        import gpu_shapes
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        mdir = gpu_shapes.build_model_dir(args.shape, Path(args.models) / args.shape)
        kw = {"dtype": torch.bfloat16, "device_map": {"": 0}}
        if quantization == "4bit":
            kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.bfloat16,
                                                           bnb_4bit_use_double_quant=True)
        elif quantization == "8bit":
            kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        model = AutoModelForCausalLM.from_pretrained(str(mdir), **kw).eval()
        return model, gpu_shapes.load_tokenizer(mdir), f"random-weight {args.shape}"
    from cai_lib.models import load_base
    loaded = load_base(args.model, quantization=quantization)
    return loaded.model, loaded.tokenizer, args.model


def measure(model, tok, prompts, *, cache: str, batch_size: int, max_new_tokens: int) -> dict:
    from cai_lib.generate import generate

    _sync()
    t0 = time.perf_counter()
    generate(model, tok, prompts[:batch_size], max_new_tokens=max_new_tokens, batch_size=batch_size,
             progress=False, cache=cache)
    _sync()
    first = time.perf_counter() - t0
    info: dict = {}
    _sync()
    t0, c0 = time.perf_counter(), time.process_time()
    recs = generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                    progress=False, cache=cache, info=info)
    _sync()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    # CPU seconds too: on a shared CPU machine wall time includes waiting for other processes
    return {"cpu_s": round(cpu, 3), "ms_per_step_cpu": 1000 * cpu / info["steps"], "batch_size": batch_size, "n_prompts": len(prompts), "first_call_s": round(first, 2),
            "wall_s": round(wall, 3), "steps": info["steps"], "ms_per_step": 1000 * wall / info["steps"],
            "new_tokens": info["new_tokens"], "tokens_per_s": info["new_tokens"] / wall,
            "row_tokens_per_s": info["row_steps"] / wall, "row_step_use": info["row_step_use"],
            "cache": info["cache"], "compiled": info["compiled"], "fallback": info["fallback"],
            "shapes": info["shapes"],
            "finish_reasons": {r: sum(x["finish_reason"] == r for x in recs) for r in ("eos", "length", "stop")},
            "responses": [r["response"] for r in recs]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default="bench_decoding.json")
    p.add_argument("--model", default="embedded:gemma-3-270m")
    p.add_argument("--shape", default=None, help="a gpu_shapes random-weight shape instead of --model (CUDA)")
    p.add_argument("--models", default="/tmp/bench_models", help="where --shape folders are built")
    p.add_argument("--quantizations", default="none")
    p.add_argument("--caches", default="dynamic,static")
    p.add_argument("--batch-sizes", default="1,64,256")
    p.add_argument("--n", type=int, default=256, help="prompts per batched measurement")
    p.add_argument("--n1", type=int, default=16, help="prompts for the batch-1 measurement")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--cert-sample", type=int, default=64, help="items in the certificate (0 = skip)")
    p.add_argument("--cert-caches", default="dynamic,static", help="cache kinds that get a certificate")
    p.add_argument("--cert-batch", type=int, default=0, help="certificate batch size (0 = the largest measured)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave)")
    p.add_argument("--lora", type=int, default=0, help="wrap the model in a LoRA adapter of this rank (all-linear), "
                   "as stage 03 decodes the trained arm (0 = none)")
    a = p.parse_args(argv)

    import torch
    import transformers
    from cai_lib.generate import comparability_certificate, pick_cache

    if a.threads:
        torch.set_num_threads(a.threads)
    sizes = [int(x) for x in a.batch_sizes.split(",") if x]  # "" = certificate only (give --cert-batch)
    items = eval_items(max(a.n, a.n1, a.cert_sample))
    prompts = [it["instruction"] for it in items]
    if a.shape:  # the shapes' word tokenizer knows only "w<id>" words: random texts of 20-80 words
        import random

        import gpu_shapes
        rng = random.Random(0)
        prompts = [gpu_shapes.random_text(rng, rng.randint(20, 80)) for _ in prompts]
        a.cert_sample = 0  # random weights: agreement says nothing (reports/benchmarks.md)
    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "load_average_start": os.getloadavg()[0]}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    res = {"env": env, "model": a.shape or a.model, "max_new_tokens": a.max_new_tokens, "lora": a.lora,
           "runs": [], "certificates": []}
    for q in a.quantizations.split(","):
        model, tok, desc = load(a, q)
        if a.lora:
            from peft import LoraConfig, get_peft_model
            model = get_peft_model(model, LoraConfig(r=a.lora, lora_alpha=2 * a.lora, target_modules="all-linear")).eval()
            desc += f" + LoRA r={a.lora}"
        res["auto_cache"] = {q: pick_cache(model, "auto")}
        for cache in a.caches.split(","):
            for bs in sizes:
                ps = prompts[: a.n1] if bs == 1 else prompts[: max(a.n, bs)]
                r = measure(model, tok, ps, cache=cache, batch_size=bs, max_new_tokens=a.max_new_tokens)
                r.update(quantization=q)
                res["runs"].append(r)
                save(a.json, res)  # after every measurement: a call cut by its time limit keeps what ran
                print(f"{desc} {q:5s} {cache:8s} batch {bs:4d}: first call {r['first_call_s']:7.1f} s, "
                      f"{r['ms_per_step']:8.1f} ms/step, {r['tokens_per_s']:9.1f} tok/s kept, "
                      f"{r['row_tokens_per_s']:9.1f} row-tok/s, row-step use {r['row_step_use']:.2f}, "
                      f"compiled {r['compiled']}, shapes {r['shapes']}", flush=True)
            if a.cert_sample and cache in a.cert_caches.split(","):
                cb = a.cert_batch or max(sizes, default=16)
                t0 = time.perf_counter()
                c = comparability_certificate(model, tok, items[: a.cert_sample], max_new_tokens=a.max_new_tokens,
                                              batch_size=cb, cache=cache)
                c.update(quantization=q, seconds=round(time.perf_counter() - t0, 1))
                res["certificates"].append(c)
                print(f"  certificate {q} {cache} batch {cb} vs 1: identical {c['identical']}/{c['n']}, "
                      f"strict {c['batched']['strict']:.3f} vs {c['batch1']['strict']:.3f}, "
                      f"loose {c['batched']['loose']:.3f} vs {c['batch1']['loose']:.3f}, "
                      f"form {c['batched']['form']:.3f} vs {c['batch1']['form']:.3f}", flush=True)
        # same prompts, same batch: do the cache kinds give the same text?
        for bs in sizes:
            rs = [r for r in res["runs"] if r["quantization"] == q and r["batch_size"] == bs]
            if len(rs) > 1:
                same = sum(x == y for x, y in zip(rs[0]["responses"], rs[1]["responses"]))
                res.setdefault("cache_agreement", []).append(
                    {"quantization": q, "batch_size": bs, "caches": [r["cache"] for r in rs[:2]],
                     "identical": same, "n": len(rs[0]["responses"])})
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    env["load_average_end"] = os.getloadavg()[0]
    save(a.json, res)
    return 0


def save(path: str, res: dict) -> None:
    """Write the results so far, each run's responses cut to 3 (keeps the JSON small)."""
    out = {**res, "runs": [{**r, "responses": r["responses"][:3]} for r in res["runs"]]}
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(out, indent=1, default=str) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
