import random

import pytest

from cai_lib import prompts
from cai_lib.errors import CaiError
from cai_lib.text import plain_key

# Shaped like cai_lib.fewshot's views ("answer"); the second uses the accepted alias "response".
EXAMPLES = [
    {"id": "fs-a", "instruction": "Answer this question: What is the capital of Spain?", "answer": "Madrid."},
    {"id": "fs-b", "instruction": "List three colors.", "response": "Red, green and blue."},
]
CRIT = [dict(EXAMPLES[0], answer="Madrid.\nQ: What is the capital of Italy?\nA: Rome.",
             critique="It answers, then writes a new question nobody asked; stop after the answer.", revision="Madrid.")]


@pytest.mark.parametrize("instruction", [
    "Answer this question: What is the capital of France?",
    "  leading and trailing spaces  ",
    "Line one\nline two:",
    "",
])
def test_raw_is_the_instruction_exactly(instruction):
    assert prompts.format_prompt(instruction, "raw") == instruction


def test_simple_formats():
    assert prompts.format_prompt("List three colors.", "instruction_response") == "Instruction: List three colors.\nResponse:"
    assert prompts.format_prompt("What is 2+2?", "qa") == "Q: What is 2+2?\nA:"
    assert prompts.BASELINE_FORMATS == ("raw", "instruction_response", "qa", "few_shot")


def test_few_shot_frame_layout():
    p = prompts.format_prompt("Respond with yes or no: Is ice cold?", "few_shot", fewshot=EXAMPLES)
    blocks = p.split("\n\n")
    assert blocks[0] == "Instruction: Answer this question: What is the capital of Spain?\nResponse: Madrid."
    assert blocks[1] == "Instruction: List three colors.\nResponse: Red, green and blue."
    # ends so the continuation is the answer itself
    assert blocks[-1] == "Instruction: Respond with yes or no: Is ice cold?\nResponse:"
    assert p.endswith("Response:")


def test_few_shot_needs_examples_and_unknown_format_fails():
    with pytest.raises(CaiError, match="few-shot examples"):
        prompts.format_prompt("x", "few_shot")
    with pytest.raises(CaiError, match="unknown prompt format"):
        prompts.format_prompt("x", "chat")
    with pytest.raises(CaiError, match="unknown prompt format"):
        prompts.stop_strings("chat")


def test_example_with_a_blank_line_or_field_line_is_refused():
    bad = [{"id": "fs-x", "instruction": "Say hi.", "answer": "Hi.\n\nmore"}]
    with pytest.raises(CaiError, match="fs-x"):
        prompts.response_frame("Say bye.", bad)
    bad2 = [{"id": "fs-y", "instruction": "Say hi.", "answer": "Hi.\nInstruction: more"}]
    with pytest.raises(CaiError, match="fs-y.*stop string"):
        prompts.response_frame("Say bye.", bad2)
    with pytest.raises(CaiError, match="'answer' missing"):
        prompts.response_frame("Say bye.", [{"id": "fs-z", "instruction": "Say hi."}])
    # "\nQ:" is no stop of the critique frame, so a run-on flawed answer may show it there
    assert "Answer: Madrid.\nQ: What is the capital of Italy?\nA: Rome.\nCritique:" in prompts.critique_frame("Say hi.", "Hi.", CRIT)
    with pytest.raises(CaiError, match="Revision:"):
        prompts.revision_frame("Say hi.", "Hi.", "ok", [dict(CRIT[0], critique="Bad.\nRevision: x")])


def test_fewshot_id_is_given_or_a_stable_hash():
    assert prompts.fewshot_id(EXAMPLES[0]) == "fs-a"
    a = prompts.fewshot_id({"instruction": "Say hi."})
    assert a == prompts.fewshot_id({"instruction": "Say hi.", "answer": "Hi."}) and a.startswith("fs-") and len(a) == 13
    assert a != prompts.fewshot_id({"instruction": "Say bye."})


def test_example_equal_to_the_instruction_is_refused_and_redrawn():
    with pytest.raises(CaiError, match="fs-a"):
        prompts.response_frame("answer this question: what is the capital of spain", EXAMPLES)

    def rotate(type_, step, k, rng):
        return rng.sample(EXAMPLES, 1)

    rng = random.Random(0)
    for _ in range(5):
        got = prompts.rotate_excluding(rotate, "qa", "response", 1, rng, EXAMPLES[0]["instruction"])
        assert got == [EXAMPLES[1]]
    with pytest.raises(CaiError, match="remove it from the bank"):
        prompts.rotate_excluding(lambda *a: [EXAMPLES[0]], "qa", "response", 1, rng, EXAMPLES[0]["instruction"])


def test_stop_strings_and_cut():
    assert prompts.stop_strings("raw") == []
    for fmt in ("instruction_response", "qa", "few_shot", "response", "critique", "revision"):
        assert "\n\n" in prompts.stop_strings(fmt)
    assert "\nQ:" in prompts.stop_strings("qa")
    assert "\nInstruction:" in prompts.stop_strings("few_shot")
    stops = prompts.stop_strings("response")
    assert prompts.cut_at_stop(" Paris.\n\nInstruction: next", stops) == (" Paris.", True)
    assert prompts.cut_at_stop(" Paris.\nInstruction: next\n\n", stops) == (" Paris.", True)  # earliest stop wins
    assert prompts.cut_at_stop(" red\n- green", stops) == (" red\n- green", False)  # a list line is not a stop
    once, _ = prompts.cut_at_stop(" Paris.\n\nmore", stops)
    assert prompts.cut_at_stop(once, stops) == (once, False)  # idempotent


def test_frames_close_on_examples_stop_strings():
    # Every separator the frame uses between examples is one of its stop strings, so a
    # model imitating the frame is cut right where its answer ends.
    for step, frame in (("response", prompts.response_frame("Say hi.", EXAMPLES)),
                        ("critique", prompts.critique_frame("Say hi.", "Hi.", CRIT)),
                        ("revision", prompts.revision_frame("Say hi.", "Hi.", "Good.", CRIT))):
        assert "\n\n" in frame and "\n\n" in prompts.stop_strings(step)
        assert frame.endswith({"response": "Response:", "critique": "Critique:", "revision": "Revision:"}[step])


def test_critique_and_revision_frames():
    c = prompts.critique_frame("Answer this question: What is 2+2?", "Five.\n\nQ: more", CRIT)
    for p in prompts.PRINCIPLES:
        assert p in c
    assert c.endswith("Instruction: Answer this question: What is 2+2?\nAnswer: Five.\nQ: more\nCritique:")
    assert "Critique: It answers, then writes a new question" in c
    r = prompts.revision_frame("Answer this question: What is 2+2?", "Five.", "Wrong: 2+2 is 4.", CRIT)
    assert "Revision: Madrid." in r
    assert r.endswith("Answer: Five.\nCritique: Wrong: 2+2 is 4.\nRevision:")
    # an empty critique still gives a well-formed frame
    assert prompts.revision_frame("Say hi.", "Hi.", "", CRIT).endswith("Critique: The answer is good.\nRevision:")


def test_item_rng_is_stable_and_per_item():
    a = [prompts.item_rng(3, "qa-1", "response").random() for _ in range(2)]
    b = [prompts.item_rng(3, "qa-1", "response").random() for _ in range(2)]
    assert a == b
    assert prompts.item_rng(3, "qa-2", "response").random() != a[0]
    assert prompts.item_rng(4, "qa-1", "response").random() != a[0]
    # stable across Python processes: string seeds go through SHA-512, not hash()
    assert round(prompts.item_rng(0, "x", "response").random(), 12) == round(random.Random("0:x:response").random(), 12)


def test_baseline_prompt_uses_rng_only_for_few_shot():
    item = {"id": "q1", "type": "qa", "instruction": "What is the capital of Peru?"}
    rot = lambda t, s, k, rng: rng.sample(EXAMPLES, k)  # noqa: E731
    assert prompts.baseline_prompt(item, "raw", rng=random.Random(0), rotate_fn=rot) == item["instruction"]
    p1 = prompts.baseline_prompt(item, "few_shot", rng=random.Random(0), k=2, rotate_fn=rot)
    p2 = prompts.baseline_prompt(item, "few_shot", rng=random.Random(0), k=2, rotate_fn=rot)
    assert p1 == p2 and p1.endswith("Instruction: What is the capital of Peru?\nResponse:")


def test_frames_from_the_real_bank_build_and_contain_no_eval_instruction():
    fewshot = pytest.importorskip("cai_lib.fewshot")
    split = pytest.importorskip("cai_lib.split")
    eval_instr = {plain_key(it["instruction"]) for it in split.eval_pool()}
    builders = {"response": lambda ex: prompts.response_frame("Say hi.", ex),
                "critique": lambda ex: prompts.critique_frame("Say hi.", "Hi.", ex),
                "revision": lambda ex: prompts.revision_frame("Say hi.", "Hi.", "Good.", ex)}
    for type_ in ("qa", "completion", "generation", "response"):
        for step, build in builders.items():
            bank = fewshot.FEWSHOT[type_][step]
            frame = build(bank)  # every example of the bank passes the frame's field checks
            shown = [line[len("Instruction: "):] for line in frame.split("\n") if line.startswith("Instruction: ")]
            assert len(shown) == len(bank) + 1 and shown[-1] == "Say hi."
            assert not {plain_key(s) for s in shown[:-1]} & eval_instr
            assert len(set(prompts.fewshot_ids(bank))) == len(bank)  # ids tell examples apart
