"""A random-weight model of a real shape, saved pre-quantized (bitsandbytes nf4), with a Qwen-like tokenizer.

Why pre-quantized and built layer by layer: Qwen2.5-32B in bf16 is 65 GB, more than the device
machine's 64 GiB disk, and weights do not change speed or memory. The model is created on the
meta device (no memory), every linear layer except lm_head is swapped for a bitsandbytes
`Linear4bit`, and then each parameter is materialized on its own: a linear weight is drawn in
bf16 on the GPU (one layer's worth, <= 0.3 GB) and quantized at once by `Params4bit`; norms,
biases, embedding and lm_head are drawn in bf16. The 4-bit checkpoint (~19 GB at 32B) is the
only thing ever written. transformers loads it like any pre-quantized folder.

The tokenizer behaves like Qwen2.5's where it matters to the package:
- no BOS token (bos_token None; the guard's BOS policy must say "none"),
- EOS = pad = "<|endoftext|>", plus the chat markers "<|im_start|>", "<|im_end|>" as specials,
- a byte-level BPE with Qwen2's pre-tokenizer regex, trained offline on the package's own
  instructions and few-shot texts (~3,000 merges: ~1.2 tokens per English word, close to
  Qwen's), then filled up to the model's vocabulary with filler tokens " w<k>" so every id a
  random model generates decodes to text. Because the pre-tokenizer is Qwen2's, the
  `Qwen2Tokenizer` that `AutoTokenizer` picks for a qwen2 folder encodes exactly as this one.
Token counts of real text are therefore approximate (not Qwen's merges): say so with results.

    python benchmarks/build_shape_checkpoint.py --shape qwen32b --out /path/qwen32b-nf4      # GPU
    python benchmarks/build_shape_checkpoint.py --shape tiny --out DIR --no-quantize          # CPU

CPU: the same code path minus the 4-bit swap (bitsandbytes 4-bit needs CUDA).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))
import gpu_shapes  # noqa: E402

EOS = "<|endoftext|>"
# "<|vision_pad|>" is in Qwen2.5's vocabulary: Unsloth picks it as the pad token when pad == EOS and
# refuses to train a tokenizer that has no such spare token (seen at 32B, 2026-12-03).
SPECIALS = (EOS, "<|im_start|>", "<|im_end|>", "<|vision_pad|>")
# Qwen2's pre-tokenizer split (its tokenizer.json): digits one by one, letters in runs.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
INIT_STD = 0.02  # small init keeps bf16 logits finite over 64 layers (as gpu_shapes.build_model_dir)

# A CPU-sized Qwen2 shape with the 32B's structure (GQA 5:1, untied, biases on q/k/v).
TINY = dict(arch="qwen2", vocab_size=4096, hidden_size=80, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=5, num_key_value_heads=1, max_position_embeddings=2048,
            rope_theta=1000000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)


def shape_spec(name: str) -> dict:
    if name == "tiny":
        return dict(TINY)
    if name not in gpu_shapes.SHAPES:
        raise SystemExit(f"unknown shape {name!r}; use tiny or one of {sorted(gpu_shapes.SHAPES)}")
    spec = dict(gpu_shapes.SHAPES[name])
    if spec["arch"] != "qwen2":
        raise SystemExit(f"shape {name!r} is {spec['arch']}; this builder makes Qwen2-architecture models")
    return spec


def _corpus() -> list[str]:
    """The package's own English: every task instruction, every few-shot field, the frame headers."""
    from cai_lib import fewshot, prompts, tasks

    texts = [it["instruction"] for it in tasks.build_all()]
    for steps in fewshot.FEWSHOT.values():
        for examples in steps.values():
            for ex in examples:
                texts += [str(v) for k, v in ex.items() if k != "id"]
    return texts + [prompts.CRITIQUE_HEADER, prompts.REVISION_HEADER]


def qwen_like_tokenizer(vocab_size: int):
    """Byte-level BPE, Qwen2 pre-tokenizer, no BOS, EOS = pad; exactly `vocab_size` ids."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre
    n_regular = vocab_size - len(SPECIALS)
    trainer = trainers.BpeTrainer(vocab_size=min(n_regular, 20000), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    trained.train_from_iterator(_corpus(), trainer=trainer)
    model = json.loads(trained.to_str())["model"]
    vocab = dict(model["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    k = 0
    while len(vocab) < n_regular:  # fillers: no merge produces them, but they decode (" w17")
        vocab.setdefault(f"\u0120w{k}", len(vocab))
        k += 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS,
                                   additional_special_tokens=list(SPECIALS[1:]))
    assert len(fast) == vocab_size and fast.bos_token_id is None
    return fast


def make_config(spec: dict, eos_id: int):
    from transformers import Qwen2Config

    spec = {k: v for k, v in spec.items() if k != "arch"}
    # Qwen2.5 base's config.json names <|endoftext|> as both bos_token_id and eos_token_id
    # while its tokenizer has no BOS token: reproduced, because the guard must cope with it.
    return Qwen2Config(**spec, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=None, dtype="bfloat16")


def _swap_linear_for_4bit(model) -> int:
    """Every nn.Linear except lm_head becomes an empty (meta) bitsandbytes Linear4bit."""
    import bitsandbytes as bnb
    import torch

    swapped = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, torch.nn.Linear) and full != "lm_head":
                with torch.device("meta"):
                    new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                            compute_dtype=torch.bfloat16, compress_statistics=True,
                                            quant_type="nf4", quant_storage=torch.uint8)
                setattr(module, child_name, new)
                swapped += 1
    return swapped


def _materialize(model, device: str, seed: int) -> None:
    """Give every meta parameter real values, one tensor at a time (4-bit weights quantized at once)."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    for mod_name, module in model.named_modules():
        for pname, p in list(module.named_parameters(recurse=False)):
            if p.device.type != "meta":
                continue
            value = torch.empty(tuple(p.shape), dtype=torch.bfloat16, device=device)
            if p.dim() >= 2:
                value.normal_(0.0, INIT_STD, generator=gen)
            elif "norm" in mod_name:
                value.fill_(1.0)
            else:
                value.zero_()
            if type(module).__name__ == "Linear4bit" and pname == "weight":
                import bitsandbytes as bnb

                # .to(cuda) on a not-yet-quantized Params4bit quantizes it; the bf16 copy is freed.
                q = bnb.nn.Params4bit(value, requires_grad=False, compress_statistics=True, quant_type="nf4",
                                      quant_storage=torch.uint8, module=module)
                module.weight = q.to(device)
            else:
                setattr(module, pname, torch.nn.Parameter(value, requires_grad=False))
            del value


def build(shape: str, out, *, quantize: bool = True, seed: int = 0, device: str | None = None,
          allow_cpu_4bit: bool = False) -> dict:
    """Write a loadable model folder (config, weights, tokenizer, generation config). Idempotent."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    out = Path(out)
    done = out / "BUILD.json"
    if done.exists():
        return json.loads(done.read_text())
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if quantize and device != "cuda" and not allow_cpu_4bit:
        # bitsandbytes >= 0.46 also quantizes on CPU (slowly): used only to test the format here
        raise SystemExit("the 4-bit checkpoint needs CUDA (bitsandbytes quantizes on the GPU); on CPU pass --no-quantize")
    t0 = time.time()
    spec = shape_spec(shape)
    tok = qwen_like_tokenizer(spec["vocab_size"])
    cfg = make_config(spec, tok.eos_token_id)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    swapped = _swap_linear_for_4bit(model) if quantize else 0
    _materialize(model, device, seed)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    if quantize:
        model.config.quantization_config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True)
    model.generation_config.bos_token_id = tok.eos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.do_sample = False
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, max_shard_size="4GB")
    tok.save_pretrained(out)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    disk = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    record = {"shape": shape, "spec": spec, "quantized": "nf4" if quantize else None, "linear_4bit": swapped,
              "seed": seed, "device": device, "seconds": round(time.time() - t0, 1),
              "disk_gib": round(disk / 2**30, 3), "build_peak_gpu_gib": peak,
              "tokenizer": {"bos": None, "eos": EOS, "pad": EOS, "vocab": len(tok)}}
    done.write_text(json.dumps(record, indent=1))
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="qwen32b", help="tiny or a gpu_shapes.SHAPES qwen2 entry")
    p.add_argument("--out", required=True)
    p.add_argument("--no-quantize", action="store_true", help="bf16 weights (CPU tests); default nf4 on CUDA")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(json.dumps(build(a.shape, a.out, quantize=not a.no_quantize, seed=a.seed)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
