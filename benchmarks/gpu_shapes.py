"""Random-weight models of real shapes for the GPU benchmarks (speed does not depend on weights).

Configs are written out here rather than fetched: the device machine has no network, and a
benchmark must not depend on a hub. Values are those of the public config.json of each model.
The tokenizer is a word-level one ("w0 w1 ...", one token per word) sized to the model's
vocabulary, so a text of N words is exactly N tokens and every generated id decodes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

SHAPES: dict[str, dict] = {
    # Qwen2.5-1.5B
    "qwen1.5b": dict(arch="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                     num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                     max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                     tie_word_embeddings=True),
    # Qwen2.5-7B
    "qwen7b": dict(arch="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                   num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                   max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                   tie_word_embeddings=False),
    # Qwen2.5-32B (only used for arithmetic: parameter counts for the memory extrapolation)
    "qwen32b": dict(arch="qwen2", vocab_size=152064, hidden_size=5120, intermediate_size=27648,
                    num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8,
                    max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-5,
                    tie_word_embeddings=False),
    # Gemma 3 270M (the embedded model's shape)
    "gemma270m": dict(arch="gemma3_text", vocab_size=262144, hidden_size=640, intermediate_size=2048,
                      num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                      max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                      sliding_window=512, query_pre_attn_scalar=256, tie_word_embeddings=True),
}

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"


def make_config(name: str):
    from transformers import Gemma3TextConfig, Qwen2Config

    spec = dict(SHAPES[name])
    arch = spec.pop("arch")
    common = dict(bos_token_id=0, eos_token_id=1, pad_token_id=2, torch_dtype="bfloat16")
    if arch == "qwen2":
        return Qwen2Config(**spec, **common)
    return Gemma3TextConfig(**spec, **common)


def param_counts(name: str) -> dict:
    """Parameter counts from the shape alone (no model built): matmul params per token, embeddings."""
    s = SHAPES[name]
    h, i, L, V = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"], s["vocab_size"]
    hd = s.get("head_dim") or h // s["num_attention_heads"]
    q = s["num_attention_heads"] * hd
    kv = s["num_key_value_heads"] * hd
    attn = h * q + 2 * h * kv + q * h
    bias = (q + 2 * kv) if s["arch"] == "qwen2" else 0
    mlp = 3 * h * i
    per_layer_linear = attn + mlp
    linear = L * per_layer_linear
    emb = V * h
    lm_head = V * h  # a matmul at every position, tied or not
    # RMSNorm weights: Qwen2 has 2 per layer, Gemma 3 has 4 per layer plus q/k norms over head_dim
    norms = (L * (2 * h) if s["arch"] == "qwen2" else L * (4 * h + 2 * hd)) + h
    return {"layers_linear": linear, "layer_bias": L * bias, "embedding": emb, "lm_head": lm_head,
            "norms": norms, "tied": bool(s["tie_word_embeddings"]),
            "total_stored": linear + L * bias + norms + emb + (0 if s["tie_word_embeddings"] else lm_head),
            "matmul_per_token": linear + lm_head, "hidden": h, "layers": L, "q_dim": q}


def attention_flops_per_token(name: str, seq: int) -> float:
    """Forward attention score+value FLOPs per token for causal attention over `seq` tokens (avg seq/2 keys)."""
    c = param_counts(name)
    return 2 * 2 * c["layers"] * c["q_dim"] * (seq / 2)


def word_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {BOS: 0, EOS: 1, PAD: 2, "<unk>": 3}
    for k in range(4, vocab_size):
        vocab[f"w{k}"] = k
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token="<unk>")
    return fast


def load_tokenizer(model_dir):
    """The word tokenizer of a benchmark folder, loaded by class, not through AutoTokenizer.

    AutoTokenizer picks the tokenizer class from config.json's model_type (Qwen2Tokenizer for
    the Qwen shapes), which rebuilds a byte-level BPE from the vocabulary and encodes every
    "w123" word to nothing (seen with transformers 5.17 and 5.24): the first device run trained
    on 2-token sequences because of it.
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(model_dir))


def random_text(rng, n_words: int, vocab_size: int = 20000) -> str:
    # Words from a moderate range of ids: every id in it is a real token of word_tokenizer.
    return " ".join(f"w{rng.randrange(4, vocab_size)}" for _ in range(n_words))


def build_model_dir(name: str, out: str | Path, *, seed: int = 0) -> Path:
    """Random bf16 weights on the GPU, saved as safetensors with the word tokenizer. Idempotent."""
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out)
    if (out / "config.json").exists() and (out / "DONE").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    torch.manual_seed(seed)
    cfg = make_config(name)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    # Small init keeps bf16 logits finite and the loss well defined.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
    model.save_pretrained(out, max_shard_size="4GB")
    word_tokenizer(cfg.vocab_size).save_pretrained(out)
    del model
    if dev == "cuda":
        torch.cuda.empty_cache()
    (out / "DONE").write_text(json.dumps({"shape": name, "seconds": time.time() - t0}))
    return out


def gpu_info() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), sm_count=p.multi_processor_count)
    from cai_lib.manifest import library_versions

    info.update({k: v for k, v in library_versions().items() if k != "torch"})  # torch: the runtime's own string
    info["UNSLOTH_COMPILE_DISABLE"] = os.environ.get("UNSLOTH_COMPILE_DISABLE")
    return info
