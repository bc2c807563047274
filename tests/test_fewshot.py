"""Few-shot bank: size per type and step, seeded rotation, no eval topics, frames accept it."""

import random

import pytest

from cai_lib import fewshot, prompts, split
from cai_lib.errors import CaiError
from cai_lib.text import normalize


def test_bank_has_8_per_type_and_step_with_fields():
    need = {"response": ("answer",), "critique": ("answer", "critique"), "revision": ("answer", "critique", "revision")}
    for typ in fewshot.TYPES:
        for step in fewshot.STEPS:
            exs = fewshot.FEWSHOT[typ][step]
            assert len(exs) >= 8, (typ, step)
            assert len({e["instruction"] for e in exs}) == len(exs)
            for e in exs:
                for key in ("id", "instruction") + need[step]:
                    assert isinstance(e[key], str) and e[key].strip(), (typ, step, key)
    ids = [e["id"] for t in fewshot.TYPES for e in fewshot.FEWSHOT[t]["response"]]
    assert len(ids) == len(set(ids))


def test_flaws_are_diverse_not_just_length():
    # The critique step must not learn "shorter is better": many flawed answers are
    # shorter than their revision (wrong, incomplete, off-topic), and some are longer.
    recs = [e for t in fewshot.TYPES for e in fewshot.FEWSHOT[t]["revision"]]
    longer = sum(len(e["revision"]) > len(e["answer"]) for e in recs)
    shorter = sum(len(e["revision"]) < len(e["answer"]) for e in recs)
    assert longer >= len(recs) // 3 and shorter >= len(recs) // 5
    assert all(e["revision"] != e["answer"] for e in recs)
    principles = ("follow the instruction", "accurate", "complete", "concise")
    for e in recs:
        assert any(p in e["critique"] for p in principles), e["critique"]


def test_rotate_seeded_and_checked():
    a = fewshot.rotate("qa", "critique", 3, random.Random(7))
    assert a == fewshot.rotate("qa", "critique", 3, random.Random(7))
    draws = {tuple(e["id"] for e in fewshot.rotate("qa", "response", 3, random.Random(s))) for s in range(20)}
    assert len(draws) > 10  # rotation actually varies with the seed
    assert len({e["id"] for e in a}) == 3
    a[0]["instruction"] = "mutated"  # callers get copies, the bank is untouched
    assert all(e["instruction"] != "mutated" for e in fewshot.FEWSHOT["qa"]["critique"])
    with pytest.raises(CaiError, match="holds"):
        fewshot.rotate("qa", "response", 99, random.Random(0))
    with pytest.raises(CaiError, match="unknown item type"):
        fewshot.rotate("poem", "response", 1, random.Random(0))
    with pytest.raises(CaiError, match="unknown step"):
        fewshot.rotate("qa", "judge", 1, random.Random(0))


def test_no_fewshot_topic_or_instruction_in_eval():
    evals = split.eval_pool()
    assert not fewshot.fewshot_topics() & {it["topic"] for it in evals}
    pool_norms = {normalize(it["instruction"]) for it in evals + split.train_pool()}
    assert not {normalize(x) for x in fewshot.all_fewshot_instructions()} & pool_norms
    assert len(fewshot.all_fewshot_instructions()) == sum(len(fewshot.FEWSHOT[t]["response"]) for t in fewshot.TYPES)


def test_data_generation_frames_accept_every_example():
    for typ in fewshot.TYPES:
        bank = fewshot.FEWSHOT[typ]
        prompts.response_frame("Q: What is 2 plus 2?", bank["response"])
        prompts.critique_frame("Q: What is 2 plus 2?", "5", bank["critique"])
        prompts.revision_frame("Q: What is 2 plus 2?", "5", "Not accurate.", bank["revision"])
