"""Tiny random models and tokenizers built in-process (no network, seconds on CPU).

The architecture is Gemma 3's text model, the same code path as the embedded default,
shrunk to a few thousand parameters. The tokenizer is a byte-level BPE trained on a small
corpus, with a chat template attached on purpose so tests can check it gets removed.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n"
)

CORPUS = [
    "Answer this question: What is the capital of France? Paris.",
    "Q: What is two plus two?\nA: Four.",
    "Instruction: List three colors.\nResponse: red, green and blue.",
    "Complete this sentence: The sky is blue.",
    "Respond with yes or no: Is water wet? Yes.",
    "Write one sentence about cats. Cats sleep a lot.",
    "The quick brown fox jumps over the lazy dog 0123456789 .,!?:;-\n",
]


def tiny_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_model(tokenizer=None, seed: int = 0, hidden: int = 32, layers: int = 2) -> Gemma3ForCausalLM:
    tokenizer = tokenizer or tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
        sliding_window=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = Gemma3ForCausalLM(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.eval()
    return model


def save_tiny(path, seed: int = 0):
    """Write a tiny model + tokenizer folder (loadable by `models.load_base`)."""
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
