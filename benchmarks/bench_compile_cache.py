"""What torch's on-disk compile caches save a *new process* on transformers' static-cache decoding.

Each pipeline stage is its own process and compiles the decoding step again (issue 13). This
measures the first generate() call per shape (batch B, then batch 1: the pipeline's order) in
fresh processes that share one cache folder:

  cold         empty caches
  warm         the caches `cold` left (inductor's FX graphs, AOT autograd, Triton/C++ kernels)
  precompile   TORCH_CACHING_PRECOMPILE=1 in its own folder, cold then warm: dynamo's traced
               code and guards are cached too, so a warm process could skip tracing
  pgo          TORCH_COMPILE_JOB_ID set in its own folder, cold then warm: torch's local
               profile-guided state (which ints turned out dynamic) is kept with the caches. Without
               it every process compiles the decoding step twice: first with the static cache's
               fill level as a constant, then, one step later, with it dynamic

The model is a random-weight Gemma 3 with the embedded 270M's 18 layers (dynamo traces per
layer, so tracing cost follows the layer count) and tiny widths by default, so it runs on CPU
too: on CPU transformers does not compile generate() unless told to (done here through the
CompileConfig), and inductor emits C++ instead of Triton, so the absolute seconds differ from a
GPU's; the cold/warm/precompile ratios are what this is for.

    python benchmarks/bench_compile_cache.py --json out.json          # the suite (subprocesses)
    python benchmarks/bench_compile_cache.py --one --json one.json    # one process (the suite's worker)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(args):
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                           num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=1,
                           head_dim=args.hidden // 4, sliding_window=512, max_position_embeddings=4096,
                           bos_token_id=0, eos_token_id=1, pad_token_id=2)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return Gemma3ForCausalLM(cfg).to(device=device, dtype=dtype).eval(), device


def first_call(model, device, batch: int, args) -> float:
    import torch
    from transformers import CompileConfig, GenerationConfig

    compile_cfg = CompileConfig(dynamic=True if args.dynamic else None)
    compile_cfg._compile_all_devices = True  # transformers compiles on CUDA only unless told
    gen = GenerationConfig(max_new_tokens=args.new_tokens, do_sample=False, cache_implementation="static",
                           max_cache_len=512, compile_config=compile_cfg, eos_token_id=None, pad_token_id=2)
    ids = torch.randint(3, args.vocab, (batch, args.prompt), generator=torch.Generator().manual_seed(batch))
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                             generation_config=gen)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, hashlib.sha256(str(out.tolist()).encode()).hexdigest()[:16]


def one(args) -> dict:
    t0 = time.perf_counter()
    import torch
    import transformers
    imported = time.perf_counter() - t0
    model, device = build(args)
    if args.fill_dynamic:
        # the static cache's per-layer fill level (a Python int) symbolic from the first compile
        torch.compiler.config.dynamic_sources = ",".join(
            f"L['kwargs']['cache'].layers[{i}].cumulative_length_int" for i in range(args.layers))
    out = {"device": device, "torch": torch.__version__, "transformers": transformers.__version__,
           "import_s": round(imported, 2), "precompile": os.environ.get("TORCH_CACHING_PRECOMPILE") == "1",
           "dynamic": bool(args.dynamic), "fill_dynamic": bool(args.fill_dynamic)}
    for b in (args.batch, 1):
        secs, tokens = first_call(model, device, b, args)
        out[f"first_call_batch{b}_s"] = round(secs, 2)
        out[f"tokens_batch{b}_sha256"] = tokens  # the generated ids: equal across settings = same decoding
        out[f"second_call_batch{b}_s"] = round(first_call(model, device, b, args)[0], 2)  # compiled: the decode cost
    out["process_s"] = round(time.perf_counter() - t0, 2)
    return out


def suite(args) -> dict:
    res = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg()[0],
           "shape": {k: getattr(args, k) for k in ("layers", "hidden", "vocab", "batch", "prompt", "new_tokens", "dynamic",
                                                             "fill_dynamic")},
           "runs": []}
    base = Path(tempfile.mkdtemp(prefix="compile-cache-bench-"))
    pgo = {"TORCH_COMPILE_JOB_ID": "bench-compile-cache"}
    cases = {"plain": (("cold", "plain", {}), ("warm", "plain", {})),
             "precompile": (("precompile_cold", "pre", {"TORCH_CACHING_PRECOMPILE": "1"}),
                            ("precompile_warm", "pre", {"TORCH_CACHING_PRECOMPILE": "1"})),
             "pgo": (("pgo_cold", "pgo", pgo), ("pgo_warm", "pgo", pgo))}
    for label, folder, env_extra in [c for name in args.cases.split(",") for c in cases[name]]:
        env = {k: v for k, v in os.environ.items() if k not in ("TORCH_CACHING_PRECOMPILE", "TORCH_COMPILE_JOB_ID")}
        env.update({"TORCHINDUCTOR_CACHE_DIR": str(base / folder / "inductor"),
                    "TRITON_CACHE_DIR": str(base / folder / "triton"), **env_extra})
        out = Path(base / f"{label}.json")
        cmd = [sys.executable, __file__, "--one", "--json", str(out)] + [
            f"--{k.replace('_', '-')}={v}" for k, v in res["shape"].items()]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
        row = {"run": label, "wall_s": round(time.perf_counter() - t0, 2), "rc": proc.returncode}
        if proc.returncode == 0:
            row.update(json.loads(out.read_text()))
        else:
            row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
        res["runs"].append(row)
        print(json.dumps(row), flush=True)
    res["load_average_end"] = os.getloadavg()[0]
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default="bench_compile_cache.json")
    p.add_argument("--one", action="store_true", help="measure in this process only (the suite's worker)")
    p.add_argument("--layers", type=int, default=18)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per subprocess")
    p.add_argument("--cases", default="plain,precompile,pgo", help="plain, precompile, pgo (comma-separated)")
    p.add_argument("--fill-dynamic", type=int, default=0, help="1: only the static cache's fill level "
                   "(cumulative_length_int of each layer) symbolic from the first compile (dynamic_sources)")
    p.add_argument("--dynamic", type=int, default=0, help="1: CompileConfig(dynamic=True) - every size and int "
                   "symbolic from the first compile (transformers' default None specializes, then recompiles)")
    a = p.parse_args(argv)
    res = one(a) if a.one else suite(a)
    tmp = Path(a.json + ".tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
