"""Contamination guard: keep a *base* model's prompts free of chat formatting.

Stage 1 measures what a base model does with a raw instruction. Any chat scaffolding that
leaks in (a chat template, turn markers, an instruct checkpoint mistaken for a base one)
turns that measurement into a measurement of someone else's instruction tuning. So:

- the tokenizer's chat template is removed (and the removal recorded for the manifest);
- BOS is added exactly once, where the model expects it, and nothing else is added;
- a prompt given as chat messages is refused;
- every encoded prompt is checked for chat markers / special tokens before generation;
- instruct-named checkpoints are refused unless explicitly allowed (see models.load_base).

The contamination sentinels (prompts a pure base model tends to continue rather than obey)
live with the stage that runs them, `baseline`: evidence for the reader, not a guard check.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from .errors import CaiError

# Text markers of the common chat formats. Checked on the prompt text itself, so a marker
# is caught even when this tokenizer does not know it as a special token (a Llama prompt
# fed to Gemma would otherwise tokenize "[INST]" as ordinary text and slip through).
CHAT_MARKERS = (
    "<start_of_turn>", "<end_of_turn>",              # Gemma
    "<|im_start|>", "<|im_end|>",                    # ChatML (Qwen, many fine-tunes)
    "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>",      # Llama 2 / Mistral
    "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",  # Llama 3
    "<|user|>", "<|assistant|>", "<|system|>",       # Zephyr / Phi
    "<|begin_of_text|>", "<|endoftext|>",
)

# Name fragments that mark a checkpoint as instruction/chat/preference tuned. Matched as
# separate tokens of the name (split on - _ . / and spaces) so "italian" or "chatterbox"
# substrings do not trigger, while "gemma-3-270m-it" and "Qwen2-7B-Instruct" do.
_INSTRUCT_TOKENS = {
    "it", "instruct", "instruction", "chat", "sft", "dpo", "rlhf", "orpo", "kto", "ppo",
    "assistant", "conversational", "hermes", "tulu", "openchat", "vicuna", "alpaca",
}
_INSTRUCT_RE = re.compile(r"instruct|chat", re.IGNORECASE)  # glued forms: "Llama-2-7b-chat-hf", "ChatGLM", "InstructGPT"


def is_instruct_name(name: str) -> bool:
    """True when a model name looks instruction-tuned (Instruct, -it, chat, -sft, -dpo, ...)."""
    if not name:
        return False
    base = str(name).rstrip("/")
    tokens = [t for t in re.split(r"[-_./\s:]+", base.lower()) if t]
    if any(t in _INSTRUCT_TOKENS for t in tokens):
        return True
    return bool(_INSTRUCT_RE.search(base))


# --------------------------------------------------------------------------- chat template

def strip_chat_template(tok):
    """Remove the tokenizer's chat template and record that it was there.

    Base-model tokenizers often ship a template (Gemma's pretrained one does); leaving it
    invites `apply_chat_template` somewhere downstream, which would silently wrap the
    instruction in turn markers. After this, `apply_chat_template` raises.
    """
    state = _state(tok)
    had = bool(getattr(tok, "chat_template", None))
    state["had_chat_template"] = state.get("had_chat_template", False) or had
    tok.chat_template = None
    # init_kwargs is what save_pretrained writes back; drop it there too so a saved
    # tokenizer does not resurrect the template.
    if isinstance(getattr(tok, "init_kwargs", None), dict):
        tok.init_kwargs.pop("chat_template", None)
    state["chat_template_removed"] = True
    return tok


def _state(tok) -> dict:
    st = getattr(tok, "_cai_guard", None)
    if not isinstance(st, dict):
        st = {}
        try:
            tok._cai_guard = st
        except Exception:  # pragma: no cover - a tokenizer that forbids attributes
            pass
    return st


# --------------------------------------------------------------------------- BOS policy

def bos_policy(tokenizer, model=None) -> dict:
    """Decide how BOS is added: exactly once, and only where the model expects it.

    Returns {"mode": "tokenizer_adds" | "prepend" | "none", "bos_token_id": int|None}.
    - tokenizer_adds: the tokenizer inserts BOS itself (Gemma, Llama); we reproduce exactly
      that one BOS and never add a second.
    - prepend: the tokenizer has a BOS but does not add it, and the model's config names the
      same BOS (e.g. a tokenizer saved with add_bos_token off) - we prepend it once.
    - none: the tokenizer has no BOS (Qwen-style), or the model does not declare one.
    Cached on the tokenizer so every encode uses the same decision.
    """
    st = _state(tokenizer)
    if "bos" in st and model is None:
        return st["bos"]
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        pol = {"mode": "none", "bos_token_id": None}
    else:
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        if probe and probe[0] == bos_id:
            pol = {"mode": "tokenizer_adds", "bos_token_id": bos_id}
        else:
            cfg_bos = getattr(getattr(model, "config", None), "bos_token_id", None) if model is not None else bos_id
            pol = {"mode": "prepend" if cfg_bos == bos_id else "none",
                   "bos_token_id": bos_id if cfg_bos == bos_id else None}
    st["bos"] = pol
    return pol


def encode_prompts(tokenizer, prompts: Sequence[str], *, check: bool = True) -> list[list[int]]:
    """Token ids for each prompt: one BOS per the model's policy, then the text, nothing else.

    The text is encoded without the tokenizer's automatic special tokens and the BOS is put
    back by hand, so the same rule holds for tokenizers that add BOS, add BOS+EOS, or add
    nothing. Raises CaiError for chat messages or chat markers (see check_prompts).
    """
    prompts = [refuse_messages(p, where=f"prompt {i}") for i, p in enumerate(prompts)]
    pol = bos_policy(tokenizer)
    out = []
    for p in prompts:
        ids = list(tokenizer(p, add_special_tokens=False)["input_ids"])
        if pol["mode"] != "none":
            ids = [pol["bos_token_id"]] + ids
        out.append(ids)
    if check:
        _check_encoded(tokenizer, prompts, out)
    return out


# --------------------------------------------------------------------------- checks

def refuse_messages(prompt: Any, where: str = "prompt"):
    """Return `prompt` if it is plain text; refuse chat messages with a one-line CaiError."""
    if isinstance(prompt, str):
        return prompt
    looks_chat = (
        isinstance(prompt, dict) and ("role" in prompt or "content" in prompt)
    ) or (
        isinstance(prompt, (list, tuple)) and any(isinstance(m, dict) for m in prompt)
    )
    if looks_chat:
        raise CaiError(
            f"{where} is a list of chat messages; a base model gets raw text only - pass the "
            "instruction string itself (stage 1 measures the base model without a chat template)"
        )
    raise CaiError(f"{where} must be a string, got {type(prompt).__name__}")


def special_ids(tokenizer) -> set[int]:
    """Every id the tokenizer treats as special (incl. additional/added special tokens).

    Cached on the tokenizer (keyed by its size, so added tokens refresh it): walking Gemma's
    6,384 added tokens takes ~15 ms, and every prompt encode checks against this set.
    """
    st = _state(tokenizer)
    cached = st.get("special_ids")
    if cached is not None and cached[0] == len(tokenizer):
        return cached[1]
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(t, "special", False):
            ids.add(int(i))
    st["special_ids"] = (len(tokenizer), ids)
    return ids


def check_prompts(tokenizer, prompts: Sequence[str]) -> None:
    """Fail (CaiError) if any prompt carries chat markers or special tokens.

    Allowed: exactly one BOS at position 0 when the BOS policy adds one. Everything else that
    the tokenizer considers special (turn markers, <eos>, <pad>, additional special tokens)
    and every known chat marker in the text is refused.
    """
    encode_prompts(tokenizer, prompts, check=True)


def _check_encoded(tokenizer, prompts: Sequence[str], encoded: Sequence[Sequence[int]]) -> None:
    specials = special_ids(tokenizer)
    pol = bos_policy(tokenizer)
    for i, (text, ids) in enumerate(zip(prompts, encoded)):
        for m in CHAT_MARKERS:
            if m.lower() in text.lower():
                raise CaiError(
                    f"prompt {i} contains the chat marker {m!r}; base-model prompts must be raw "
                    "text - remove the chat formatting from the instruction/few-shot text"
                )
        body = list(ids)
        if pol["mode"] != "none":
            body = body[1:]  # the one BOS we added
        bad = [t for t in body if t in specials]
        if bad:
            tok_txt = tokenizer.convert_ids_to_tokens(bad[0])
            what = "a second BOS" if bad[0] == pol.get("bos_token_id") else f"the special token {tok_txt!r}"
            raise CaiError(
                f"prompt {i} encodes {what}; base-model prompts may contain only one leading BOS - "
                "remove special-token text from the prompt"
            )


def guard_report(loaded) -> dict:
    """What the guard did, for the manifest and the baseline notebook."""
    tok = loaded.tokenizer
    st = _state(tok)
    pol = bos_policy(tok)
    info = getattr(loaded, "info", {}) or {}
    return {
        "chat_template_removed": bool(st.get("chat_template_removed")),
        "had_chat_template": bool(st.get("had_chat_template")),
        "chat_template_now": getattr(tok, "chat_template", None) is not None,
        "bos_policy": pol["mode"],
        "bos_token": tok.convert_ids_to_tokens(pol["bos_token_id"]) if pol["bos_token_id"] is not None else None,
        "special_token_count": len(special_ids(tok)),
        "chat_markers_checked": list(CHAT_MARKERS),
        "instruct_check": info.get("instruct_check", {}),
    }
