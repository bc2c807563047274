"""Prompt formats: the raw evaluation format, baseline frames, and data-generation frames.

Two uses, kept apart on purpose:

* **Evaluation** (and the baseline's `raw` format) sends the instruction *exactly*; the
  encoder adds BOS and nothing else — no chat template, no frame, no stop strings.
  Stopping is part of following an instruction, so evaluation never cuts an answer.
* **Data generation** (stage 01) uses completion-style few-shot frames: a base model
  continues a document of solved examples, so its continuation after the final
  `Response:` is an answer to the instruction. Each frame has stop strings (the
  separators the frame itself uses between examples); generation for data stops there
  and `cut_at_stop` re-cuts defensively. FRAME_STOPS is for data generation ONLY.

Every frame ends with a field label and no trailing space (``...\\nResponse:``): the
model's continuation *is* the answer (usually with a leading space, which pairs strip).

Few-shot examples (from `cai_lib.fewshot`) are dicts with ``instruction`` plus, per
step: ``answer`` (response step: a good answer); ``answer`` and ``critique`` (critique
step: a flawed answer and its critique); ``answer``, ``critique`` and ``revision``
(revision step). ``response`` is accepted for ``answer``; ``id`` is optional (else a
hash of the instruction, see `fewshot_id`). A field may not contain its frame's stop
strings, or the model's imitation would end in the wrong place.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Iterable, Sequence

from .errors import CaiError
from .text import plain_key

# The four baseline formats of issue 2 item 9 (00_baseline runs each).
BASELINE_FORMATS = ("raw", "instruction_response", "qa", "few_shot")

# Stage-1 principles the critique and revision frames judge answers by.
PRINCIPLES = (
    "Follow the instruction: do what it asks, in the form it asks for, and nothing else.",
    "Be accurate: state only what is true.",
    "Be complete: answer every part of the instruction.",
    "Be concise: stop once the instruction is answered.",
)

# Stop strings per frame — data generation only. "\n\n" ends an example in every frame
# (examples are separated by a blank line); the field labels catch a model that starts a
# new example or a new field on the very next line.
FRAME_STOPS = {
    "raw": [],  # evaluation format: never cut
    "instruction_response": ["\n\n", "\nInstruction:"],
    "qa": ["\n\n", "\nQ:"],
    "few_shot": ["\n\n", "\nInstruction:", "\nResponse:"],
    "response": ["\n\n", "\nInstruction:", "\nResponse:"],
    "critique": ["\n\n", "\nInstruction:", "\nAnswer:", "\nCritique:", "\nRevision:"],
    "revision": ["\n\n", "\nInstruction:", "\nAnswer:", "\nCritique:", "\nRevision:"],
}

CRITIQUE_HEADER = (
    "A careful reviewer checks each answer against four principles:\n"
    + "\n".join(f"{i}. {p}" for i, p in enumerate(PRINCIPLES, 1))
    + "\nFor each answer the reviewer writes a short critique naming what breaks a principle, "
    "or says the answer is good."
)
REVISION_HEADER = (
    "Each answer below was reviewed against four principles:\n"
    + "\n".join(f"{i}. {p}" for i, p in enumerate(PRINCIPLES, 1))
    + "\nThe revision fixes every problem the critique names and is the answer itself, "
    "with nothing after it."
)

# The bank (cai_lib.fewshot) calls the example answer "answer"; "response" also accepted.
_ANSWER = ("answer", "response")


def stop_strings(fmt: str) -> list[str]:
    """Stop strings for a data-generation frame (a fresh list; `raw` has none)."""
    if fmt not in FRAME_STOPS:
        raise CaiError(f"unknown prompt format {fmt!r} — choose one of {sorted(FRAME_STOPS)}")
    return list(FRAME_STOPS[fmt])


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` at the earliest stop string. Returns (cut text, whether a stop was found).

    Idempotent, so it is safe whether or not the generator already removed the stop.
    """
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1 and i < cut:
            cut = i
    return text[:cut], cut < len(text)


def fewshot_id(example: dict) -> str:
    """The example's `id`, else a stable id from its instruction ("fs-" + sha1[:10]), so
    generations record which examples they showed even when the bank carries no ids."""
    if example.get("id"):
        return str(example["id"])
    return "fs-" + hashlib.sha1(str(example.get("instruction", "")).encode("utf-8")).hexdigest()[:10]


def _field(example: dict, keys: tuple[str, ...], stops: Sequence[str]) -> str:
    """A field of a few-shot example (first of `keys` present), checked against the frame.

    A field holding one of the frame's stop strings would end the model's imitation in
    the wrong place and hide the example structure, so it is refused. (A flawed answer
    may contain "\nQ:" inside a critique frame: that frame does not stop on it.)
    """
    value = next((example[k] for k in keys if isinstance(example.get(k), str)), None)
    if value is None or not value.strip():
        raise CaiError(f"few-shot example {fewshot_id(example)!r} ({example.get('instruction', '')[:40]!r}): field "
                       f"{keys[0]!r} missing or empty — fix it in cai_lib/fewshot.py")
    value = value.strip()
    bad = next((s for s in stops if s in value), None)
    if bad is not None:
        raise CaiError(
            f"few-shot example {fewshot_id(example)!r} ({example.get('instruction', '')[:40]!r}): field {keys[0]!r} "
            f"contains {bad!r}, a stop string of its frame — rewrite it in cai_lib/fewshot.py"
        )
    return value


def _clean_inserted(text: str) -> str:
    """A model-written answer/critique placed inside a frame: no blank lines, stripped.

    Answers are already cut at "\\n\\n", so this only guards against a caller passing
    raw text; a blank line would make the next frame stop inside the example.
    """
    return re.sub(r"\n\s*\n+", "\n", text.strip())


def _is_self(example: dict, instruction: str) -> bool:
    # An example equal to the instruction asked would hand the model its answer.
    return plain_key(str(example.get("instruction", ""))) == plain_key(instruction)


def _check_not_self(instruction: str, examples: Iterable[dict]) -> None:
    for ex in examples:
        if _is_self(ex, instruction):
            raise CaiError(f"few-shot example {fewshot_id(ex)!r} is the instruction being asked — rotate another example")


def fewshot_ids(examples: Iterable[dict]) -> list[str]:
    return [fewshot_id(ex) for ex in examples]


# ---- baseline / evaluation formats ------------------------------------------------------

def format_prompt(instruction: str, fmt: str, *, fewshot: Sequence[dict] | None = None) -> str:
    """The prompt for `instruction` in format `fmt` (one of BASELINE_FORMATS).

    raw: the instruction exactly (the evaluation format). instruction_response:
    ``Instruction: …\\nResponse:``. qa: ``Q: …\\nA:``. few_shot: the data-generation
    response frame with `fewshot` solved examples (required) then the instruction.
    """
    if not isinstance(instruction, str):
        raise CaiError(f"instruction must be a string, got {type(instruction).__name__}")
    if fmt == "raw":
        return instruction
    if fmt == "instruction_response":
        return f"Instruction: {instruction}\nResponse:"
    if fmt == "qa":
        return f"Q: {instruction}\nA:"
    if fmt == "few_shot":
        if not fewshot:
            raise CaiError("format 'few_shot' needs few-shot examples — pass fewshot=fewshot.rotate(type, 'response', k, rng)")
        return response_frame(instruction, fewshot)
    raise CaiError(f"unknown prompt format {fmt!r} — choose one of {list(BASELINE_FORMATS)}")


# ---- data-generation frames -------------------------------------------------------------

def response_frame(instruction: str, examples: Sequence[dict]) -> str:
    """Few-shot completion frame whose continuation is the answer to `instruction`."""
    _check_not_self(instruction, examples)
    st = FRAME_STOPS["response"]
    blocks = [f"Instruction: {_field(ex, ('instruction',), st)}\nResponse: {_field(ex, _ANSWER, st)}" for ex in examples]
    blocks.append(f"Instruction: {instruction}\nResponse:")
    return "\n\n".join(blocks)


_CRITIQUE_FIELDS = (("Instruction", ("instruction",)), ("Answer", None), ("Critique", ("critique",)))
_REVISION_FIELDS = _CRITIQUE_FIELDS + (("Revision", ("revision",)),)


def _example_block(ex: dict, stops, fields) -> str:
    """One worked example of a frame: a "Label: value" line per field (None = the answer keys)."""
    return "\n".join(f"{label}: {_field(ex, keys or _ANSWER, stops)}" for label, keys in fields)


def critique_frame(instruction: str, answer: str, examples: Sequence[dict]) -> str:
    """Few-shot frame whose continuation critiques `answer` against PRINCIPLES."""
    _check_not_self(instruction, examples)
    st = FRAME_STOPS["critique"]
    blocks = [CRITIQUE_HEADER] + [_example_block(ex, st, _CRITIQUE_FIELDS) for ex in examples]
    blocks.append(f"Instruction: {instruction}\nAnswer: {_clean_inserted(answer)}\nCritique:")
    return "\n\n".join(blocks)


def revision_frame(instruction: str, answer: str, critique: str, examples: Sequence[dict]) -> str:
    """Few-shot frame whose continuation is `answer` revised to fix `critique`."""
    _check_not_self(instruction, examples)
    st = FRAME_STOPS["revision"]
    blocks = [REVISION_HEADER] + [_example_block(ex, st, _REVISION_FIELDS) for ex in examples]
    blocks.append(
        f"Instruction: {instruction}\nAnswer: {_clean_inserted(answer)}\n"
        f"Critique: {_clean_inserted(critique) or 'The answer is good.'}\nRevision:"
    )
    return "\n\n".join(blocks)


def item_rng(seed: int, item_id: str, step: str) -> random.Random:
    """A per-(item, step) RNG: few-shot choice does not depend on batch order or resume.

    String seeds are hashed with SHA-512 by `random.seed` (version 2), so this is stable
    across processes and Python runs (unlike `hash()`).
    """
    return random.Random(f"{seed}:{item_id}:{step}")


def rotate_excluding(rotate_fn, type_: str, step: str, k: int, rng: random.Random, instruction: str) -> list[dict]:
    """rotate_fn(type, step, k, rng), redrawn (same rng, so still deterministic) while an
    example is the instruction being asked — it would hand the model its own answer."""
    for _ in range(8):
        examples = list(rotate_fn(type_, step, k, rng))
        if not any(_is_self(ex, instruction) for ex in examples):
            return examples
    raise CaiError(f"few-shot bank: every draw for step {step!r} contains the instruction {instruction[:60]!r} — "
                   "remove it from the bank (an eval/train instruction must never be a few-shot example)")


def baseline_prompt(item: dict, fmt: str, *, rng: random.Random, k: int = 3, rotate_fn=None) -> str:
    """The prompt for one item in one baseline format (00_baseline).

    `few_shot` rotates `k` response examples of the item's type with `rng`; the other
    formats ignore `rng`, so every format sees the same items in the same order.
    """
    examples = None
    if fmt == "few_shot":
        if rotate_fn is None:
            from .fewshot import rotate as rotate_fn  # lazy: the bank is another module
        examples = rotate_excluding(rotate_fn, item["type"], "response", k, rng, item["instruction"])
    return format_prompt(item["instruction"], fmt, fewshot=examples)
