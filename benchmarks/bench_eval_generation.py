"""Evaluation-generation throughput: batch 1 (what the replaced system forced) vs batched greedy.

Runs `cai_lib.generate.generate` - the function the evaluation stage uses - on the same prompts
at each batch size, and reports generated tokens/s and the share of responses identical to
the batch-1 responses. Default model: a random-weight Qwen2.5-1.5B shape in bf16 (weights do
not change speed). Random weights give near-uniform logits, where bf16 batching flips greedy
choices far more often than with a trained model, so `--model-dir` repeats the agreement
check on a real model (the embedded Gemma 3 270M on the device run).

    python benchmarks/bench_eval_generation.py --json out.json [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))
import gpu_shapes  # noqa: E402


def random_prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [gpu_shapes.random_text(rng, rng.randint(20, 80)) for _ in range(n)]


def real_prompts(n: int) -> list[str]:
    """Raw held-out instructions, exactly as evaluation sends them: the type-balanced, seeded
    sample stage 01 draws (the pool itself is sorted by type)."""
    from cai_lib import split
    from cai_lib.items import sample_items
    return [it["instruction"] for it in sample_items(split.eval_pool(), n, 0)]


def measure(model, tok, prompts, batch_sizes, max_new_tokens) -> dict:
    import torch
    from cai_lib.generate import generate, throughput

    generate(model, tok, prompts[:2], max_new_tokens=4, batch_size=2, progress=False)  # warm-up
    out = {}
    base = None
    for bs in batch_sizes:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        recs = generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=bs, progress=False)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        th = throughput(recs)
        if base is None:
            base = recs
        same = sum(a["response"] == b["response"] for a, b in zip(base, recs))
        # agreement over the first 16 generated tokens too: a late divergence matters less
        out[str(bs)] = {"batch_size": bs, "tokens_per_s": th["new_tokens"] / wall, "new_tokens": th["new_tokens"],
                        "wall_s": wall, "identical_to_batch1": same, "n": len(prompts),
                        "identical_share": same / len(prompts),
                        "finish_reasons": {r: sum(x["finish_reason"] == r for x in recs) for r in ("eos", "length", "stop")}}
        print(f"batch {bs:3d}: {out[str(bs)]['tokens_per_s']:8.1f} tok/s  identical {same}/{len(prompts)}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default="bench_eval_generation.json")
    p.add_argument("--models", default="/tmp/bench_models")
    p.add_argument("--shape", default="qwen1.5b")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-sizes", default="1,8,16,32,64")
    p.add_argument("--model-dir", default=None, help="a real model folder for a second agreement check")
    a = p.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer  # AutoTokenizer: real models only
    from cai_lib.config import RunConfig

    sizes = [int(x) for x in a.batch_sizes.split(",")]
    res = {"env": gpu_shapes.gpu_info(), "max_new_tokens": a.max_new_tokens, "n_prompts": a.n,
           "package_default_gen_batch_size": RunConfig().gen_batch_size}
    mdir = gpu_shapes.build_model_dir(a.shape, Path(a.models) / a.shape)
    model = AutoModelForCausalLM.from_pretrained(str(mdir), dtype=torch.bfloat16, device_map={"": 0},
                                                 attn_implementation="sdpa").eval()
    tok = gpu_shapes.load_tokenizer(mdir)
    print(f"random-weight {a.shape}, bf16, {a.n} prompts x {a.max_new_tokens} new tokens", flush=True)
    prompts = random_prompts(a.n)
    lens = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    if min(lens) < 20:  # a broken tokenizer must not produce a plausible table
        raise RuntimeError(f"prompts tokenized to {min(lens)}..{max(lens)} tokens, expected 20..80")
    res["prompt_tokens_mean"] = sum(lens) / len(lens)
    res["random_" + a.shape] = measure(model, tok, prompts, sizes, a.max_new_tokens)
    del model
    torch.cuda.empty_cache()
    if a.model_dir:
        model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.bfloat16, device_map={"": 0}).eval()
        tok = AutoTokenizer.from_pretrained(a.model_dir)
        print(f"real model {a.model_dir}", flush=True)
        res["real_model"] = measure(model, tok, real_prompts(a.n), sizes, a.max_new_tokens)
    Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
