"""DPO training-step benchmark: this package's training path, backend by backend, side by side.

Every backend trains the same synthetic pairs on the same model shape with
`cai_lib.train.train_dpo` (TRL DPOTrainer + PEFT LoRA, reference = adapter disabled), so
what is timed is exactly what stage 02 runs. Each backend runs in its own subprocess:
Unsloth patches transformers/TRL/PEFT on import, so the plain-TRL baseline must live in
a process that never imported it. One invocation runs them all and prints one table.

Backends
  transformers  fp32 on CPU, bf16 on CUDA; LoRA via TRL's peft_config
  trl-bnb4      CUDA: plain TRL + PEFT QLoRA (bitsandbytes nf4, prepare_model_for_kbit_training)
  unsloth       CUDA: Unsloth FastLanguageModel 4-bit + FastLanguageModel.get_peft_model
  auto          what this machine can run: CPU -> transformers; CUDA -> trl-bnb4 (+ unsloth)

Model: `--model SPEC` (anything `cai_lib.models.load_base` takes, e.g. embedded:gemma-3-270m)
or `--shape NAME` (random weights from a written-out config of a real model; speed does not
depend on the weights) with a word-level tokenizer in which "w123" is one token, so a
sequence has exactly --seq-len tokens. With --model the text is random common words,
sized to about --seq-len tokens with the real tokenizer (actual counts are reported).

Timing: wall time of each optimizer step between on_step_begin/on_step_end (CUDA
synchronized), after --warmup steps; pairs/s = batch x grad-accum / step time; tokens/s =
non-pad tokens of chosen and rejected sequences (prompt counted in both, as the model
processes it twice) / step time. Peak memory: torch.cuda.max_memory_allocated on CUDA,
the subprocess's peak RSS on CPU (includes model loading).

    python benchmarks/bench_dpo.py --model embedded:gemma-3-270m --steps 4 --batch 2 --seq-len 128
    python benchmarks/bench_dpo.py --shape qwen2.5-7b --backends trl-bnb4,unsloth --batch 4 --seq-len 384 \\
        --gradient-checkpointing --steps 10 --json reports/bench_dpo_h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_shapes import SHAPES as _PUBLIC_SHAPES, load_tokenizer  # noqa: E402  (one table of real shapes for every benchmark)


def _as_config_kwargs(shape: dict) -> dict:
    kw = dict(shape)
    kw["model_type"] = kw.pop("arch")
    return kw


SHAPES = {name: _as_config_kwargs(_PUBLIC_SHAPES[key]) for name, key in
          (("gemma-3-270m", "gemma270m"), ("qwen2.5-1.5b", "qwen1.5b"), ("qwen2.5-7b", "qwen7b"))}
# not a real model: a seconds-long smoke run of this script's machinery
SHAPES["tiny-gemma3"] = dict(model_type="gemma3_text", vocab_size=4096, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                             max_position_embeddings=2048, sliding_window=512, tie_word_embeddings=True)
BACKEND_SETUP = {  # bench name -> (load_base backend, quantization)
    "transformers": ("transformers", "none"),
    "trl-bnb4": ("transformers", "4bit"),
    "unsloth": ("unsloth", "4bit"),
}
WORDS = ("the of and to in is was for on that with as by at from his her an which this are were be had "
         "it not or have one all their has but been they she there can more when other who time into "
         "some could them two would first then its only new these may over such after most also city "
         "year water river light house small world great place state people number answer question").split()


# ---------------------------------------------------------------------------------------
# model and data
# ---------------------------------------------------------------------------------------

def build_shape_dir(shape: str, root: Path) -> Path:
    """A random-weight model of a real shape + word-level tokenizer, saved once per shape."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    out = root / f"{shape}-random"
    if (out / "done").exists():
        return out
    spec = dict(SHAPES[shape])
    vocab_size = spec["vocab_size"]
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, vocab_size)})
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    model_type = spec.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **spec, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    cuda = torch.cuda.is_available()
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16 if cuda else torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "done").write_text("ok")
    del model
    return out


def make_pairs(tok, n: int, seq_len: int, word_tokens: bool, seed: int = 0) -> list[dict]:
    """n pairs whose prompt is ~1/3 and each completion ~2/3 of seq_len tokens (EOS included)."""
    rng = random.Random(seed)
    p_len = max(4, seq_len // 3)
    c_len = max(4, seq_len - p_len - 2)  # -BOS -EOS

    def text(n_tokens):
        if word_tokens:
            return " ".join(f"w{rng.randrange(4, min(30000, len(tok)))}" for _ in range(n_tokens))
        words = []
        while len(tok(" ".join(words), add_special_tokens=False)["input_ids"]) < n_tokens:
            words.append(rng.choice(WORDS))
        return " ".join(words)

    return [{"prompt": text(p_len), "chosen": text(c_len), "rejected": text(c_len)} for _ in range(n)]


# ---------------------------------------------------------------------------------------
# one backend (subprocess)
# ---------------------------------------------------------------------------------------

def run_case(a) -> dict:
    if a.case == "unsloth":
        os.environ.setdefault("UNSLOTH_COMPILE_DISABLE", "1")  # 115 s vs 23 s for 8 short steps (H100)
        import unsloth  # noqa: F401  — before transformers/trl/peft
    import torch
    from transformers import TrainerCallback

    from cai_lib import train, train_log
    from cai_lib.config import RunConfig
    from cai_lib.jsonl import write_jsonl
    from cai_lib.models import load_base

    torch.set_num_threads(a.threads) if a.threads else None
    lb_backend, quant = BACKEND_SETUP[a.case]
    spec = a.model or str(build_shape_dir(a.shape, Path(a.models_dir)))
    t0 = time.perf_counter()
    loaded = load_base(spec, backend=lb_backend, quantization=quant, purpose="train")
    if a.model is None:
        # load_base's AutoTokenizer gives a Qwen folder Qwen2Tokenizer, which encodes the word
        # tokens to nothing (gpu_shapes.load_tokenizer); prepare the by-class one as load_base would.
        from cai_lib import guard

        tok = load_tokenizer(spec)
        guard.strip_chat_template(tok)
        tok.padding_side = "left"
        guard.bos_policy(tok, loaded.model)
        loaded.tokenizer = tok
    load_s = time.perf_counter() - t0
    n_steps = a.warmup + a.steps
    n_pairs = a.batch * a.grad_accum * n_steps
    pairs = make_pairs(loaded.tokenizer, n_pairs, a.seq_len, word_tokens=a.model is None, seed=a.seed)
    work = Path(tempfile.mkdtemp(prefix=f"bench-dpo-{a.case}-"))
    write_jsonl(work / "data" / "preference_pairs.jsonl", pairs)
    cfg = RunConfig(
        model=spec, backend=lb_backend, quantization=quant, lora_r=a.lora_r, lora_alpha=2 * a.lora_r,
        loss_type=a.loss_type.split(","), loss_weights=[1.0] * len(a.loss_type.split(",")),
        max_steps=n_steps, per_device_batch_size=a.batch, gradient_accumulation_steps=a.grad_accum,
        max_length=a.seq_len + 16, max_prompt_length=a.seq_len, save_steps=10 ** 6, warmup_ratio=0.0,
        learning_rate=1e-4, gradient_checkpointing=a.gradient_checkpointing,
        precompute_ref_log_probs=a.precompute_ref, seed=a.seed,
    )
    cuda = torch.cuda.is_available()
    times, marks = [], {}

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)
            marks[state.global_step] = state.num_input_tokens_seen

    summary = train.train_dpo(loaded, work / "data" / "preference_pairs.jsonl", work, cfg, resume=False,
                              progress=False, callbacks=[StepTimer()])
    per_pair = summary["pairs"]["tokens_per_epoch"] / max(1, summary["pairs"]["used"])
    if per_pair < a.seq_len:  # chosen + rejected ≈ 2 × seq_len: far less means the tokenizer dropped words
        raise SystemExit(f"bench_dpo: {per_pair:.0f} tokens per pair for --seq-len {a.seq_len} — the tokenizer drops the pair text")
    timed = times[a.warmup:]
    step_s = statistics.mean(timed)
    tokens = marks[n_steps] - marks.get(a.warmup, 0)
    mem, kind = train_log.peak_memory()
    n_params = sum(p.numel() for p in loaded.model.parameters())
    # Useful matmul work: policy forward + backward to activations (frozen base: no weight
    # grads) + reference forward unless precomputed; 2 FLOPs per parameter per token each.
    passes = 4 + (0 if a.precompute_ref else 2)
    tflops = passes * n_params * (tokens / len(timed)) / step_s / 1e12 if timed else None
    return {
        "backend": a.case, "package_backend": summary["backend"], "model": a.model or f"{a.shape} (random weights)",
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        "n_parameters": n_params, "batch": a.batch, "grad_accum": a.grad_accum, "seq_len_target": a.seq_len,
        "tokens_per_pair_mean": round(summary["pairs"]["tokens_per_epoch"] / max(1, summary["pairs"]["used"]), 1),
        "loss_type": cfg.loss_type, "gradient_checkpointing": a.gradient_checkpointing,
        "precompute_ref_log_probs": a.precompute_ref, "lora_r": a.lora_r,
        "warmup_steps": a.warmup, "timed_steps": len(timed),
        "step_s_mean": round(step_s, 4), "step_s_median": round(statistics.median(timed), 4),
        "pairs_per_s": round(a.batch * a.grad_accum / step_s, 3),
        "tokens_per_s": round(tokens / sum(timed), 1),
        "approx_model_tflops": round(tflops, 3) if tflops else None,
        # dense bf16 peak of H100/H200 SXM: 989.4 TFLOP/s
        "approx_mfu": round(tflops * 1e12 / 989.4e12, 4) if tflops and cuda and any(
            g in torch.cuda.get_device_name(0) for g in ("H100", "H200")) else None,
        "peak_memory_gib": round(mem / 2 ** 30, 3), "peak_memory_kind": kind,
        "load_seconds": round(load_s, 2), "final_loss": summary["final"]["loss"],
        "versions": summary["versions"],
        "load_average_1m_end": round(os.getloadavg()[0], 2),  # other work on the machine skews CPU timings
        "unsloth_compile_disable": os.environ.get("UNSLOTH_COMPILE_DISABLE") if a.case == "unsloth" else None,
    }


# ---------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------

def available_backends() -> list[str]:
    import importlib.util

    import torch
    if not torch.cuda.is_available():
        return ["transformers"]
    out = ["trl-bnb4"]
    if importlib.util.find_spec("unsloth") is not None:
        out.append("unsloth")
    return out


def table(rows: list[dict]) -> str:
    head = ("| backend | package backend | device | model | batch | tokens/pair | step s | pairs/s | tokens/s | "
            "peak mem GiB | ratio pairs/s |\n|---|---|---|---|---|---|---|---|---|---|---|")
    base = next((r for r in rows if "pairs_per_s" in r), None)
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['backend']} | failed: {r['error'][:80]} | | | | | | | | | |")
            continue
        ratio = r["pairs_per_s"] / base["pairs_per_s"] if base else float("nan")
        lines.append(f"| {r['backend']} | {r['package_backend']} | {r['device']} | {r['model']} | {r['batch']} | "
                     f"{r['tokens_per_pair_mean']} | {r['step_s_mean']:.3f} | {r['pairs_per_s']:.2f} | "
                     f"{r['tokens_per_s']:.0f} | {r['peak_memory_gib']:.2f} ({r['peak_memory_kind']}) | {ratio:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", help="a load_base spec, e.g. embedded:gemma-3-270m")
    src.add_argument("--shape", choices=sorted(SHAPES), help="random weights of a real model's shape")
    ap.add_argument("--backends", default="auto", help="comma list of transformers,trl-bnb4,unsloth or auto")
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps (allocation, compilation)")
    ap.add_argument("--batch", type=int, default=2, help="pairs per device batch")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (prompt + completion)")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--loss-type", default="sigmoid,sft")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--precompute-ref", action="store_true", help="reference log-probs computed once before training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--models-dir", default=str(Path(tempfile.gettempdir()) / "cai-bench-models"))
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--case-out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.case:
        res = run_case(a)
        Path(a.case_out).write_text(json.dumps(res))
        return 0
    if not a.model and not a.shape:
        a.model = "embedded:gemma-3-270m"
    backends = available_backends() if a.backends == "auto" else [b.strip() for b in a.backends.split(",") if b.strip()]
    for b in backends:
        if b not in BACKEND_SETUP:
            ap.error(f"unknown backend {b!r}; choose from {sorted(BACKEND_SETUP)} or auto")
    rows = []
    passthrough = [x for x in (argv if argv is not None else sys.argv[1:])]
    for b in backends:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
            out = fh.name
        cmd = [sys.executable, str(Path(__file__).resolve()), *passthrough, "--case", b, "--case-out", out]
        print(f"[bench_dpo] {b}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, text=True, capture_output=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            rows.append({"backend": b, "error": tail[0], "stderr_tail": (proc.stderr or "")[-4000:]})
            print(f"[bench_dpo] {b} failed: {tail[0]}", flush=True)
        else:
            rows.append(json.loads(Path(out).read_text()))
            print(f"[bench_dpo] {b}: {rows[-1]['pairs_per_s']} pairs/s ({time.perf_counter() - t0:.0f} s)", flush=True)
        os.unlink(out)
    print()
    print(table(rows))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        # no paths of this machine in a file that may be committed
        args = {k: v for k, v in vars(a).items() if k not in ("models_dir", "json", "case", "case_out")}
        Path(a.json).write_text(json.dumps({"args": args, "results": rows}, indent=2) + "\n")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
