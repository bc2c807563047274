"""DPO training-step benchmark on CUDA: plain TRL + PEFT QLoRA (bnb nf4) vs Unsloth 4-bit QLoRA,
and TRL + PEFT LoRA on bf16 weights (backend "trl-bf16": the package's transformers backend
with quantization none).

One process per measurement (Unsloth patches transformers and TRL when imported, so the plain
TRL baseline must run in a process that never imported it). `--suite` runs every case as a
subprocess in one invocation, on the same card, and writes one JSON.

Per case: a random-weight model of a real shape (benchmarks/gpu_shapes.py), the same synthetic
pairs (prompt 127 words + 256-word completions; word = token, so every sequence is exactly
384 tokens with EOS), the same batch, LoRA r=16/alpha=32 on all linear projections, gradient
checkpointing, sigmoid DPO, reference = policy with adapter disabled (or precomputed).
Step time is measured with CUDA-synchronized callbacks after `--warmup` steps.

MFU counts useful matmul FLOPs only: policy forward (2·N·T) + backward through frozen
weights to the activations (2·N·T; frozen 4-bit weights get no weight gradient) + reference
forward (2·N·T) unless precomputed, + attention, over the H100 SXM dense bf16 peak of
989 TFLOP/s. Gradient-checkpointing recompute is not counted (it is overhead, not model work).

    python benchmarks/bench_dpo_gpu.py --suite --shapes qwen1.5b,qwen7b --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_shapes  # noqa: E402

H100_BF16_DENSE = 989.4e12


def split_words(seq: int) -> tuple[int, int]:
    """(prompt words, completion words) filling `seq` tokens with EOS: a third prompt (384 -> 127 + 256)."""
    prompt = seq // 3 - 1
    return prompt, seq - prompt - 1


def make_pairs(n: int, seed: int = 0, seq: int = 384) -> list[dict]:
    rng = random.Random(seed)
    pw, cw = split_words(seq)
    return [{"prompt": gpu_shapes.random_text(rng, pw) + " ",
             "chosen": gpu_shapes.random_text(rng, cw),
             "rejected": gpu_shapes.random_text(rng, cw)} for _ in range(n)]


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def run_case(a) -> dict:
    backend = a.backend
    if backend == "unsloth":
        import unsloth  # noqa: F401  - must come before transformers/trl
        from unsloth import FastLanguageModel
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    model_dir = gpu_shapes.build_model_dir(a.shape, Path(a.models) / a.shape)
    torch.cuda.reset_peak_memory_stats()
    t_load = time.time()
    peft_config = None
    if backend == "unsloth":
        model, tok = FastLanguageModel.from_pretrained(
            model_name=str(model_dir), max_seq_length=a.seq, load_in_4bit=True, dtype=torch.bfloat16,
            local_files_only=True)
        model = FastLanguageModel.get_peft_model(
            model, r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0, bias="none", target_modules=LORA_TARGETS,
            use_gradient_checkpointing="unsloth" if a.grad_ckpt else False, random_state=0)
        tok = gpu_shapes.load_tokenizer(model_dir)  # Unsloth's AutoTokenizer load picks Qwen2Tokenizer
    else:
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        q = None if backend == "trl-bf16" else BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), quantization_config=q, dtype=torch.bfloat16,
                                                     device_map={"": 0}, attn_implementation="sdpa")
        tok = gpu_shapes.load_tokenizer(model_dir)
        peft_config = LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0, bias="none",
                                 target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    load_s = time.time() - t_load
    mem_after_load = torch.cuda.memory_allocated()

    n_steps = a.warmup + a.steps
    pairs = make_pairs(a.batch * a.accum * n_steps, seed=0, seq=a.seq)
    ds = Dataset.from_list(pairs)
    cfg = DPOConfig(
        output_dir=str(Path(a.models) / "out" / f"{backend}-{a.shape}"), per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=a.accum, max_length=a.seq, max_steps=n_steps, learning_rate=5e-6,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_strategy="no", report_to="none",
        bf16=True, beta=0.1,
        # as cai_lib.train does: Unsloth checkpoints through get_peft_model("unsloth"), TRL through the config
        gradient_checkpointing=bool(a.grad_ckpt) and backend != "unsloth", loss_type=["sigmoid"], seed=0,
        precompute_ref_log_probs=a.precompute_ref, dataloader_num_workers=0, remove_unused_columns=False,
        disable_tqdm=True)

    times: list[float] = []
    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    t_init = time.time()
    trainer = DPOTrainer(model=model, ref_model=None, args=cfg, train_dataset=ds, processing_class=tok,
                         peft_config=peft_config, callbacks=[Timer()])
    init_s = time.time() - t_init
    # Token count from the prepared dataset (prompt + completion ids, chosen and rejected).
    prepared = trainer.train_dataset
    seq_lens = [len(r["prompt_ids"]) + len(r["chosen_ids"]) for r in prepared] + \
               [len(r["prompt_ids"]) + len(r["rejected_ids"]) for r in prepared]
    tokens_per_pair = min(statistics.mean(seq_lens), a.seq) * 2
    if tokens_per_pair != 2 * a.seq:  # a broken tokenizer must not produce a plausible table
        raise RuntimeError(f"pairs tokenized to {tokens_per_pair} tokens, expected {2 * a.seq}")
    t_train = time.time()
    trainer.train()
    train_s = time.time() - t_train
    measured = times[a.warmup:]
    step = statistics.median(measured)
    pairs_per_step = a.batch * a.accum
    toks_step = tokens_per_pair * pairs_per_step
    c = gpu_shapes.param_counts(a.shape)
    n_mat = c["matmul_per_token"]
    att = gpu_shapes.attention_flops_per_token(a.shape, a.seq)
    fwd = 2 * n_mat + att
    passes = 2 + (0 if a.precompute_ref else 1)  # policy fwd + policy input-grad bwd + ref fwd
    flops_step = passes * fwd * toks_step
    return {
        "backend": backend, "shape": a.shape, "precompute_ref": a.precompute_ref, "batch_pairs": a.batch,
        "grad_accum": a.accum, "seq_len": a.seq, "grad_ckpt": a.grad_ckpt, "lora_rank": a.rank, "warmup_steps": a.warmup,
        "measured_steps": len(measured), "step_s_median": step, "step_s_all": times,
        "pairs_per_s": pairs_per_step / step, "tokens_per_s": toks_step / step,
        "tokens_per_step": toks_step, "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "after_load_gib": mem_after_load / 2**30, "load_s": load_s, "trainer_init_s": init_s, "train_s": train_s,
        "losses": losses, "model_tflop_per_step": flops_step / 1e12,
        "mfu_vs_989": flops_step / step / H100_BF16_DENSE, "compile_disabled": os.environ.get("UNSLOTH_COMPILE_DISABLE"),
        "env": gpu_shapes.gpu_info(),
    }


def one(a) -> int:
    try:
        res = run_case(a)
    except Exception as exc:  # noqa: BLE001 - a failing case is recorded with its error text
        import traceback
        res = {"backend": a.backend, "shape": a.shape, "precompute_ref": a.precompute_ref, "error": repr(exc),
               "traceback": traceback.format_exc()[-4000:]}
    Path(a.json).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k not in ("step_s_all", "env", "traceback", "losses")}))
    return 0 if "error" not in res else 1


def suite(a) -> int:
    """Every case in its own process, sequentially, on the same card; one JSON with all results."""
    cases = []
    for shape in a.shapes.split(","):
        for backend in a.backends.split(","):
            pre = backend.endswith("+pre")  # e.g. "trl-bf16+pre": that backend with precomputed reference
            cases.append((backend.removesuffix("+pre"), shape, pre))
        if a.with_precompute:
            cases.append(("unsloth", shape, True))
    results = []
    tmp = Path(a.models) / "case.json"
    for backend, shape, pre in cases:
        argv = [sys.executable, __file__, "--backend", backend, "--shape", shape, "--models", a.models,
                "--json", str(tmp), "--batch", str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps),
                "--warmup", str(a.warmup), "--rank", str(a.rank), "--accum", str(a.accum),
                "--grad-ckpt", str(a.grad_ckpt)]
        if pre:
            argv.append("--precompute-ref")
        print(">>", backend, shape, "precompute" if pre else "", flush=True)
        t0 = time.time()
        subprocess.run(argv, check=False)
        r = json.loads(tmp.read_text()) if tmp.exists() else {"backend": backend, "shape": shape, "error": "no output"}
        r["wall_s"] = time.time() - t0
        results.append(r)
        Path(a.json).write_text(json.dumps(results, indent=1))
        tmp.unlink(missing_ok=True)
    print(table(results))
    return 0


def table(results) -> str:
    lines = ["backend  shape     pre  pairs/s  tok/s   peakGiB  MFU    step_s  load_s", "-" * 72]
    for r in results:
        if "error" in r:
            lines.append(f"{r['backend']:8} {r['shape']:9} {'y' if r.get('precompute_ref') else 'n'}    ERROR {r['error'][:60]}")
            continue
        lines.append(f"{r['backend']:8} {r['shape']:9} {'y' if r['precompute_ref'] else 'n'}    {r['pairs_per_s']:7.2f} "
                     f"{r['tokens_per_s']:7.0f} {r['peak_alloc_gib']:7.2f}  {r['mfu_vs_989']:.3f}  {r['step_s_median']:.3f}  {r['load_s']:.0f}")
    return "\n".join(lines)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--suite", action="store_true")
    p.add_argument("--backend", choices=["trl", "trl-bf16", "unsloth"], default="trl")
    p.add_argument("--backends", default="trl,unsloth", help="comma list; a +pre suffix adds precomputed reference")
    p.add_argument("--shape", default="qwen1.5b")
    p.add_argument("--shapes", default="qwen1.5b,qwen7b")
    p.add_argument("--with-precompute", action="store_true", help="also Unsloth with reference log-probs precomputed")
    p.add_argument("--precompute-ref", action="store_true")
    p.add_argument("--models", default="/tmp/bench_models")
    p.add_argument("--json", default="bench_dpo_gpu.json")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--seq", type=int, default=384)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--grad-ckpt", type=int, choices=[0, 1], default=1,
                   help="gradient checkpointing (the package's default is off: gradient_checkpointing False)")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse(sys.argv[1:])
    sys.exit(suite(args) if args.suite else one(args))
