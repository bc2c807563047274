"""Stage 02's pair-tokenisation contract: preference pairs -> the token ids DPO trains on.

Testable without TRL: only a tokenizer is needed.

Tokenization — why this module tokenizes instead of TRL
-------------------------------------------------------
TRL 1.15 and 1.16 (same `_prepare_dataset` in both) tokenize a plain-text pair as
`tokenizer(prompt)` and `tokenizer(prompt + chosen + eos_token)` and start the completion
where the two diverge. Three problems for a base model evaluated on raw instructions:
(1) whether BOS appears depends on the tokenizer's post-processor, not on what
evaluation feeds; (2) tokens can merge across the prompt/completion boundary, and then
the prompt the model trains on is not the token sequence it sees at evaluation (TRL then
moves the merged tail of the prompt into the completion, with a warning); (3) EOS is
appended as *text* and re-tokenized. So `encode_pair` builds the ids itself and a
`DPOTrainer` subclass skips TRL's text pass (`_prepare_dataset` returns the dataset as
is; the collator, loss and logging are TRL's):

    prompt_ids = guard.encode_prompts([instruction])  exactly what evaluation encodes: [BOS] + ids
    chosen_ids = tokenize(SEP + chosen.strip()) + [EOS]
    rejected_ids = tokenize(SEP + rejected.strip()) + [EOS]

The prompt is the raw instruction, unchanged (no newline added, no chat template ever),
because that is what evaluation presents. The separator belongs to the completion, so
the model learns to emit it: SEP = "\\n" when `chosen_leading_space` is False (the
answer starts on the line after the instruction; "" if the instruction already ends in
a newline) and " " when True (the answer continues the instruction's line). Chosen and
rejected get the same separator, so it cancels in the DPO margin and only the SFT term
sees it. The completion is tokenized as the suffix of `tokenize(instruction + SEP +
text)` when that keeps the prompt's tokens intact (the tokenization the model met in
pre-training), otherwise on its own (counted as `boundary_retokenized`).

Pairs too long are dropped, never truncated (a cut chosen loses its EOS and would teach
the model not to stop): a pair is dropped when its prompt exceeds `max_prompt_length`
tokens or prompt + chosen or prompt + rejected exceeds `max_length`. Counts are
reported; pairs whose chosen or rejected is empty, or identical to each other, are
dropped too (no preference to learn), and so are completions holding special-token text
(an "<eos>" inside an answer would tokenize to EOS mid-answer). All dropped is a CaiError.
"""

from __future__ import annotations

from pathlib import Path

from . import guard
from .errors import CaiError
from .jsonl import read_jsonl

PAIR_FIELDS = ("prompt", "chosen", "rejected")


def load_pairs(path) -> list[dict]:
    """Read and validate the pairs file: one JSON object per line with string
    prompt/chosen/rejected. Empty or malformed → CaiError naming the line."""
    path = Path(path)
    rows = read_jsonl(path, required=PAIR_FIELDS)
    if not rows:
        raise CaiError(f"{path}: no preference pairs — rerun stage 01_generate (it writes data/preference_pairs.jsonl)")
    for i, row in enumerate(rows, 1):
        for key in PAIR_FIELDS:
            if not isinstance(row[key], str):
                raise CaiError(f"{path}: pair {i}: field {key!r} must be a string, got {type(row[key]).__name__} — fix or regenerate the pairs file")
    return rows


def completion_text(prompt: str, text: str, leading_space: bool) -> str:
    """What the model should write after the raw instruction (before EOS)."""
    body = text.strip()
    if leading_space:
        return " " + body
    return ("" if prompt.endswith("\n") else "\n") + body


def answer_text(row: dict, key: str) -> str:
    """The raw answer of a pair: `chosen_answer` / `rejected_answer` when the file has them
    (pairs.trl_record), else `chosen` / `rejected` (hand-made files). The separator is always
    the config's, so a file written with another `chosen_leading_space` trains consistently."""
    raw = row.get(f"{key}_answer")
    return raw if isinstance(raw, str) else row[key]


def encode_prompt(tokenizer, text: str) -> list[int]:
    """The ids evaluation feeds the model: `guard.encode_prompts` (one BOS where the
    tokenizer/model use one, then the raw text; chat markers refused), shared with
    `generate.generate` so training and evaluation prompts are the same tokens."""
    from .guard import encode_prompts
    return encode_prompts(tokenizer, [text])[0]


def _encode_completion(tokenizer, prompt: str, prompt_body: list[int], completion: str) -> tuple[list[int], bool]:
    """Completion ids (no EOS); True when the joint tokenization merged across the boundary."""
    joint = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    if joint[: len(prompt_body)] == prompt_body:
        return list(joint[len(prompt_body):]), False
    return list(tokenizer(completion, add_special_tokens=False)["input_ids"]), True


def encode_pair(tokenizer, row: dict, *, leading_space: bool) -> dict:
    prompt = row["prompt"]
    eos = tokenizer.eos_token_id
    if eos is None:
        raise CaiError("the tokenizer has no eos_token — training must teach the model to stop; use a tokenizer with an EOS token")
    prompt_ids = encode_prompt(tokenizer, prompt)
    body = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if prompt_ids[len(prompt_ids) - len(body):] != body:
        raise CaiError(f"internal: prompt encoding is not BOS + text for {prompt[:40]!r}")
    out = {"prompt_ids": prompt_ids, "boundary_retokenized": False, "special_in_completion": False}
    # the guard's set: all_special_ids misses added specials such as Gemma's <start_of_turn>
    specials = guard.special_ids(tokenizer)
    for key in ("chosen", "rejected"):
        ids, merged = _encode_completion(tokenizer, prompt, body,
                                         completion_text(prompt, answer_text(row, key), leading_space))
        out["special_in_completion"] |= any(t in specials for t in ids)
        out[f"{key}_ids"] = ids + [eos]
        out["boundary_retokenized"] |= merged
    return out


def prepare_pairs(tokenizer, rows: list[dict], cfg, *, source="pairs") -> tuple[list[dict], dict]:
    """Encode every pair and apply the drop rules; returns (records, counts)."""
    counts = {"total": len(rows), "used": 0, "dropped_prompt_too_long": 0, "dropped_too_long": 0,
              "dropped_empty": 0, "dropped_identical": 0, "dropped_special_tokens": 0, "boundary_retokenized": 0}
    records = []
    for i, row in enumerate(rows, 1):
        chosen, rejected = answer_text(row, "chosen"), answer_text(row, "rejected")
        # An empty rejected is kept only when the data stage made it on purpose: "ended at once"
        # (EOS immediately) is a failure the model must learn to avoid (pairs.py, pair_type).
        if not chosen.strip() or (not rejected.strip() and row.get("pair_type") != "empty_rejected"):
            counts["dropped_empty"] += 1
            continue
        if chosen.strip() == rejected.strip():
            counts["dropped_identical"] += 1
            continue
        try:
            enc = encode_pair(tokenizer, row, leading_space=cfg.chosen_leading_space)
        except CaiError as exc:
            raise CaiError(f"{source}: pair {i}: {exc}") from None
        if enc.pop("special_in_completion"):
            # e.g. "<eos>" written out as text: it would tokenize to a second EOS mid-answer
            counts["dropped_special_tokens"] += 1
            continue
        n_p = len(enc["prompt_ids"])
        if n_p > cfg.max_prompt_length:
            counts["dropped_prompt_too_long"] += 1
            continue
        if n_p + max(len(enc["chosen_ids"]), len(enc["rejected_ids"])) > cfg.max_length:
            counts["dropped_too_long"] += 1
            continue
        counts["boundary_retokenized"] += int(enc.pop("boundary_retokenized"))
        records.append(enc)
    counts["used"] = len(records)
    counts["tokens_per_epoch"] = sum(len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in records)
    if not records:
        raise CaiError(
            f"{source}: all {counts['total']} pairs were dropped ({counts['dropped_prompt_too_long']} prompt > "
            f"max_prompt_length={cfg.max_prompt_length}, {counts['dropped_too_long']} longer than "
            f"max_length={cfg.max_length}, {counts['dropped_empty']} empty, {counts['dropped_identical']} identical) "
            "— raise max_length/max_prompt_length or regenerate the pairs")
    return records, counts
