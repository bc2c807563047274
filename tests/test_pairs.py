import json
import random
from types import SimpleNamespace

import pytest

from cai_lib import pairs, prompts
from cai_lib.config import RunConfig
from cai_lib.errors import CaiError
from cai_lib.jsonl import read_json, read_jsonl
from cai_lib.runs import run_paths

TYPES = ("qa", "completion", "generation", "response")
STEP_FIELDS = {"response": ("answer",), "critique": ("answer", "critique"),
               "revision": ("answer", "critique", "revision")}


def fake_rotate(type_, step, k, rng):
    """A bank of 6 examples per type and step, ids recorded like the real bank's."""
    bank = []
    for i in range(6):
        ex = {"id": f"fs-{type_}-{step}-{i}", "instruction": f"Example {type_} instruction {i}.",
              "answer": f"Example answer {i}.", "critique": f"Critique {i}.", "revision": f"Revised {i}."}
        bank.append({k2: v for k2, v in ex.items() if k2 in ("id", "instruction") + STEP_FIELDS[step]})
    return rng.sample(bank, k)


def _instruction_and_step(prompt):
    for step, tail in (("response", "\nResponse:"), ("critique", "\nCritique:"), ("revision", "\nRevision:")):
        if prompt.endswith(tail):
            last = prompt.rsplit("\n\nInstruction: ", 1)[-1]
            if last.startswith("Instruction: "):
                last = last[len("Instruction: "):]
            return last.split("\n", 1)[0], step
    return prompt, "raw"


class FakeGen:
    """Returns scripted continuations per (instruction, step), applying stop strings the
    way generate() does (cut, finish_reason "stop"); can fail after N calls."""

    def __init__(self, script, fail_after=None):
        self.script, self.fail_after, self.calls = script, fail_after, []

    def __call__(self, model, tokenizer, prompts_, *, max_new_tokens, batch_size=8, stop=None, progress=True, desc=""):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("killed mid-generation")
        self.calls.append(list(prompts_))
        assert len(prompts_) <= batch_size
        out = []
        for p in prompts_:
            text, fr = self.script[_instruction_and_step(p)]
            if stop:
                cut, hit = prompts.cut_at_stop(text, stop)
                if hit:
                    text, fr = cut, "stop"
            out.append({"response": text, "finish_reason": fr, "prompt_tokens": len(p.split()),
                        "new_tokens": len(text.split()), "seconds": 0.01})
        return out


def item(id_, type_, instruction, checks):
    return {"id": id_, "type": type_, "instruction": instruction, "checks": checks}


ITEMS = [
    item("qa-1", "qa", "Answer this question: What is the capital of France?", [{"kind": "contains_any", "values": ["Paris"]}]),
    item("qa-2", "qa", "Answer this question: What is the capital of Peru?", [{"kind": "contains_any", "values": ["Lima"]}]),
    item("qa-3", "qa", "Answer this question: What is two plus two?", [{"kind": "number", "value": 4}]),
    item("co-1", "completion", "Complete this sentence: The sky is", [{"kind": "contains_any", "values": ["blue"]}]),
    item("ge-1", "generation", "Write one sentence about cats.", [{"kind": "sentences", "n": 1}]),
    item("re-1", "response", "Respond with yes or no: Is water wet?", [{"kind": "yes_no", "value": "yes"}]),
]

# format_distillation script: (instruction, step) -> (continuation, finish_reason)
FD = {
    # kept: the raw continuation runs on past the answer
    (ITEMS[0]["instruction"], "response"): (" Paris.\n\nInstruction: Name a color.", "length"),
    (ITEMS[0]["instruction"], "raw"): (" Paris. Paris is the capital of France and the largest city", "length"),
    # chosen fails its check (wrong fact)
    (ITEMS[1]["instruction"], "response"): (" Madrid.\n\n", "length"),
    # kept: the raw continuation is EOS at once -> an empty_rejected pair (issue 12 item 4)
    (ITEMS[2]["instruction"], "response"): (" Four.\n\n", "length"),
    (ITEMS[2]["instruction"], "raw"): ("", "eos"),
    # identical after stripping -> dropped
    (ITEMS[3]["instruction"], "response"): (" blue.", "eos"),
    (ITEMS[3]["instruction"], "raw"): (" blue.\n", "eos"),
    # empty chosen (the model wrote the separator at once)
    (ITEMS[4]["instruction"], "response"): ("\n\nInstruction: x", "length"),
    # never stopped: unfinished
    (ITEMS[5]["instruction"], "response"): (" Yes, water is wet and so on and on", "length"),
}

CR = {
    # kept: revision fixes a wrong answer
    (ITEMS[0]["instruction"], "response"): (" The capital is Lyon.\n\n", "length"),
    (ITEMS[0]["instruction"], "critique"): (" Wrong: the capital of France is Paris.\n\nInstruction:", "length"),
    (ITEMS[0]["instruction"], "revision"): (" Paris.\n\nInstruction:", "length"),
    # kept, but the revision only trims the original (length-only flag)
    (ITEMS[1]["instruction"], "response"): (" Lima is the capital of Peru and it is a big city.\n\n", "length"),
    (ITEMS[1]["instruction"], "critique"): (" Too long.\n\n", "length"),
    (ITEMS[1]["instruction"], "revision"): (" Lima is the capital of Peru.\n\n", "length"),
    # original empty -> no critique/revision generated, rejected_empty
    (ITEMS[2]["instruction"], "response"): ("\n\n", "length"),
    # revision identical to the original
    (ITEMS[3]["instruction"], "response"): (" blue.\n\n", "length"),
    (ITEMS[3]["instruction"], "critique"): (" Good.\n\n", "length"),
    (ITEMS[3]["instruction"], "revision"): (" blue.\n\n", "length"),
    # revision fails the check
    (ITEMS[4]["instruction"], "response"): (" Cats.\n\n", "length"),
    (ITEMS[4]["instruction"], "critique"): (" Not a sentence.\n\n", "length"),
    (ITEMS[4]["instruction"], "revision"): (" Cats sleep. Cats purr.\n\n", "length"),
    # revision that never ends
    (ITEMS[5]["instruction"], "response"): (" No.\n\n", "length"),
    (ITEMS[5]["instruction"], "critique"): (" Wrong.\n\n", "length"),
    (ITEMS[5]["instruction"], "revision"): (" Yes yes yes yes", "length"),
}


def cfg(**kw):
    base = dict(gen_batch_size=2, data_max_new_tokens=16, n_fewshot=2, seed=0)
    base.update(kw)
    return RunConfig(**base)


def build(tmp_path, strategy, script, name="run", **kw):
    paths = run_paths(tmp_path / name)
    gen = kw.pop("gen", None) or FakeGen(script)
    out = pairs.build_pairs(None, ITEMS, cfg(**kw), paths, strategy=strategy, generate_fn=gen,
                            rotate_fn=fake_rotate, progress=False)
    return out, paths, gen


def test_format_distillation_pairs_and_filters(tmp_path):
    (kept, dropped), paths, gen = build(tmp_path, "format_distillation", FD)
    assert [p["item_id"] for p in kept] == ["qa-1", "qa-3"]
    p = kept[0]
    assert p["pair_type"] == "raw_continuation"
    empty = kept[1]  # "EOS immediately" on the raw prompt is what not to do: rejected, never chosen
    assert empty["pair_type"] == "empty_rejected" and empty["rejected"] == "" and empty["chosen"] == "Four."
    assert empty["scores"]["rejected"]["failures"] == ["number", "empty"]
    assert p["prompt"] == ITEMS[0]["instruction"]  # raw instruction, exactly
    assert p["chosen"] == "Paris."  # cut at the frame's stop, stripped
    assert p["rejected"] == "Paris. Paris is the capital of France and the largest city"  # not cut
    assert p["strategy"] == "format_distillation" and p["type"] == "qa"
    assert p["finish_reasons"] == {"chosen": "stop", "rejected": "length"}
    assert p["scores"]["chosen"]["strict"] is True
    assert p["scores"]["rejected"]["strict"] is False  # ran to max_new_tokens: what eval would fail
    assert p["lengths"] == {"chosen_chars": 6, "chosen_words": 1, "rejected_chars": len(p["rejected"]),
                            "rejected_words": 11}
    assert p["length_only"] == "chosen_prefix"
    assert p["edit_distance_words"] == 10
    assert len(p["fewshot_ids"]["response"]) == 2
    assert p["new_tokens"] == {"response": 1, "raw": 11}

    reasons = {d["item_id"]: d["reason"] for d in dropped}
    assert reasons == {"qa-2": "chosen_fails_strict", "co-1": "identical",
                       "ge-1": "chosen_empty", "re-1": "chosen_unfinished"}
    qa2 = next(d for d in dropped if d["item_id"] == "qa-2")
    assert qa2["failures"] == ["contains_any"]
    re1 = next(d for d in dropped if d["item_id"] == "re-1")
    assert re1["reasons"][0] == "chosen_unfinished" and "chosen_fails_strict" in re1["reasons"]

    # the raw continuation was generated only where chosen survived
    rows = read_jsonl(paths.generations)
    raw_ids = sorted(r["item_id"] for r in rows if r["step"] == "raw")
    assert raw_ids == ["co-1", "qa-1", "qa-3"]
    raw_row = next(r for r in rows if r["step"] == "raw" and r["item_id"] == "qa-1")
    assert raw_row["prompt"] == ITEMS[0]["instruction"] and raw_row["stop"] == []
    # evaluation-like raw generation got no stop strings; framed generation did
    assert all(r["stop"] for r in rows if r["step"] == "response")
    # outputs on disk
    assert read_jsonl(paths.preference_pairs) == kept
    stats = read_json(paths.pair_stats)
    assert stats["n_kept"] == 2 and stats["n_dropped"] == 4
    assert stats["generation"]["response"]["generated"] == 6 and stats["generation"]["raw"]["generated"] == 3
    assert stats["dropped_by_reason"] == {"chosen_fails_strict": 1, "identical": 1,
                                          "chosen_empty": 1, "chosen_unfinished": 1}
    assert stats["empty_chosen"] == 0 and stats["empty_rejected_pairs"] == 1
    assert stats["pair_types"]["raw_continuation"]["share_chosen_shorter"] == 1.0
    assert stats["by_strategy"]["format_distillation"]["keep_rate_items"] == round(2 / 6, 4)
    assert stats["answer_skew"] is not None


def test_critique_revision_pairs_and_filters(tmp_path):
    (kept, dropped), paths, gen = build(tmp_path, "critique_revision", CR)
    assert [p["item_id"] for p in kept] == ["qa-1"]
    # the trim of an already-correct answer has no verifiable preference: dropped ...
    assert next(d for d in dropped if d["item_id"] == "qa-2")["reason"] == "rejected_passes_strict"
    # ... unless the profile keeps such pairs; then the length-only flag marks it
    (kept, dropped), paths, gen = build(tmp_path, "critique_revision", CR, name="keep",
                                        pair_keep_if_rejected_passes=True)
    by_id = {p["item_id"]: p for p in kept}
    assert sorted(by_id) == ["qa-1", "qa-2"]
    p = by_id["qa-1"]
    assert (p["prompt"], p["chosen"], p["rejected"]) == (ITEMS[0]["instruction"], "Paris.", "The capital is Lyon.")
    assert p["critique"] == "Wrong: the capital of France is Paris."
    assert p["length_only"] is None
    assert set(p["fewshot_ids"]) == {"response", "critique", "revision"}
    assert all(i.startswith("fs-qa-critique-") for i in p["fewshot_ids"]["critique"])
    assert by_id["qa-2"]["length_only"] == "chosen_prefix"  # the "revision" only trimmed

    reasons = {d["item_id"]: d["reason"] for d in dropped}
    assert reasons == {"qa-3": "rejected_empty", "co-1": "identical", "ge-1": "chosen_fails_strict",
                       "re-1": "chosen_unfinished"}
    rows = read_jsonl(paths.generations)
    assert not [r for r in rows if r["item_id"] == "qa-3" and r["step"] != "response"]
    # the revision prompt carries the cut original answer and critique
    rev = next(r for r in rows if r["item_id"] == "qa-1" and r["step"] == "revision")
    assert rev["prompt"].endswith(f"Instruction: {ITEMS[0]['instruction']}\nAnswer: The capital is Lyon.\n"
                                  "Critique: Wrong: the capital of France is Paris.\nRevision:")


def test_strategies_share_the_response_step(tmp_path):
    # switching strategy in the same run reuses the framed answers (same prompts, same rng)
    script = {**CR, **{(it["instruction"], "raw"): (" and more text", "length") for it in ITEMS}}
    _, paths, g1 = build(tmp_path, "critique_revision", script)
    _, _, g2 = build(tmp_path, "format_distillation", script)
    assert not any(p.endswith("\nResponse:") for batch in g2.calls for p in batch)


def test_diagnostics_counts_and_length_only_flag():
    def mk(i, chosen, rejected, type_="qa", strategy="critique_revision", rej_strict=False):
        return {"item_id": f"x{i}", "type": type_, "strategy": strategy, "chosen": chosen, "rejected": rejected,
                "lengths": {"chosen_words": pairs.count_words(chosen), "rejected_words": pairs.count_words(rejected)},
                "edit_distance_words": pairs.word_edit_distance(chosen, rejected),
                "length_only": pairs.length_only_kind(chosen, rejected),
                "scores": {"chosen": {"strict": True}, "rejected": {"strict": rej_strict}}}

    kept = [
        mk(1, "Lima is the capital.", "Lima is the capital. It is big and old."),   # chosen_prefix
        mk(2, "Paris.", "I think Paris."),                                          # chosen_within
        mk(3, "Yes, it is wet.", "Yes", type_="response"),                          # rejected_within
        mk(4, "Blue.", "Green and red.", type_="completion", rej_strict=True),      # content differs
    ]
    dropped = [
        {"item_id": "d1", "type": "qa", "strategy": "critique_revision", "reason": "identical", "reasons": ["identical"]},
        {"item_id": "d2", "type": "qa", "strategy": "critique_revision", "reason": "chosen_fails_strict",
         "reasons": ["chosen_fails_strict"], "failures": ["contains_any", "echo"]},
        {"item_id": "d3", "type": "generation", "strategy": "critique_revision", "reason": "chosen_unfinished",
         "reasons": ["chosen_unfinished", "chosen_fails_strict"], "failures": ["finish_reason=length"]},
    ]
    s = pairs.pair_diagnostics(kept, dropped)
    json.dumps(s)  # serialisable
    assert (s["n_kept"], s["n_dropped"], s["n_candidates"]) == (4, 3, 7)
    assert s["kept"] == {"critique_revision": {"qa": 2, "response": 1, "completion": 1}}
    assert s["dropped"] == {"critique_revision": {"qa": {"identical": 1, "chosen_fails_strict": 1},
                                                  "generation": {"chosen_unfinished": 1}}}
    assert s["dropped_any_reason"]["chosen_fails_strict"] == 2
    assert s["chosen_failures"] == {"contains_any": 1, "echo": 1}
    assert s["length_only"]["n"] == 3 and s["length_only"]["share"] == 0.75
    assert s["length_only"]["by_kind"] == {"chosen_prefix": 1, "chosen_within": 1, "rejected_within": 1}
    assert s["rejected_passes_strict"] == {"n": 1, "share": 0.25}
    assert s["share_chosen_shorter"] == 0.75
    # chosen words 4,1,4,1; rejected 9,3,1,3 — independent median computations
    assert s["length_words"]["chosen"]["median"] == 2.5
    assert s["length_words"]["rejected"]["median"] == 3.0
    assert s["length_words"]["chosen_minus_rejected"]["min"] == -5
    assert s["edit_distance_words"]["max"] == 5


def test_text_helpers():
    assert pairs.word_edit_distance("a b c", "a b c") == 0
    assert pairs.word_edit_distance("a b c", "a x c d") == 2
    assert pairs.word_edit_distance("", "a b") == 2
    assert pairs.count_words("Hello , world - 42") == 3
    assert pairs.length_only_kind("Paris", "paris.") == "same_words"
    assert pairs.length_only_kind("Paris is big", "Rome is big") is None
    assert pairs.length_only_kind("", "x") is None


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    (ref_kept, ref_dropped), ref_paths, _ = build(tmp_path, "critique_revision", CR, name="ref")
    ref_rows = read_jsonl(ref_paths.generations)

    # killed during the critique step: response step is 3 batches of 2, critique step 3 batches
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, "critique_revision", CR, name="run", gen=FakeGen(CR, fail_after=4))
    paths = run_paths(tmp_path / "run")
    partial = read_jsonl(paths.generations)
    assert 0 < len(partial) < len(ref_rows)
    assert not paths.preference_pairs.exists()  # nothing half-written
    # a torn line from a kill mid-append is tolerated and repaired
    with open(paths.generations, "a") as fh:
        fh.write('{"item_id": "qa-1", "step": "revi')

    (kept, dropped), _, gen = build(tmp_path, "critique_revision", CR, name="run")
    rows = read_jsonl(paths.generations)
    keys = [(r["item_id"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys))  # no duplicates
    assert set(keys) == {(r["item_id"], r["step"]) for r in ref_rows}  # none missing
    assert rows[: len(partial)] == partial  # finished rows kept as they were
    regenerated = [p for batch in gen.calls for p in batch]
    assert not set(regenerated) & {r["prompt"] for r in partial}  # finished keys skipped
    assert kept == ref_kept and dropped == ref_dropped
    assert read_jsonl(paths.preference_pairs) == read_jsonl(ref_paths.preference_pairs)

    # a third run generates nothing
    _, _, gen3 = build(tmp_path, "critique_revision", CR, name="run")
    assert gen3.calls == []


def test_resume_refuses_rows_made_with_other_settings(tmp_path):
    build(tmp_path, "format_distillation", FD)
    with pytest.raises(CaiError, match="different prompt or max_new_tokens"):
        build(tmp_path, "format_distillation", FD, data_max_new_tokens=32)
    with pytest.raises(CaiError, match="different prompt"):
        build(tmp_path, "format_distillation", FD, n_fewshot=3)


def test_bad_input(tmp_path):
    paths = run_paths(tmp_path / "r")
    with pytest.raises(CaiError, match="pair_strategy"):
        pairs.build_pairs(None, ITEMS, cfg(), paths, strategy="magic", generate_fn=FakeGen(FD), rotate_fn=fake_rotate)
    with pytest.raises(CaiError, match="duplicate id"):
        pairs.build_pairs(None, ITEMS + ITEMS[:1], cfg(), paths, generate_fn=FakeGen(FD), rotate_fn=fake_rotate)
    assert not paths.generations.exists()


def test_example_pairs_and_fewshot_ids(tmp_path):
    (kept, _), paths, _ = build(tmp_path, "critique_revision", CR, pair_keep_if_rejected_passes=True)
    ex = pairs.example_pairs(kept, n=3, seed=0)
    assert len(ex) == 2 and {e["item_id"] for e in ex} == {"qa-1", "qa-2"}
    assert set(ex[0]) >= {"prompt", "chosen", "rejected", "critique"}
    ids = pairs.used_fewshot_ids(paths)
    assert ids and all(i.startswith("fs-") for i in ids)
    assert {i for p in kept for v in p["fewshot_ids"].values() for i in v} <= ids


def test_fewshot_rotation_is_seeded(tmp_path):
    _, p0, _ = build(tmp_path, "format_distillation", FD, name="a", seed=0)
    _, p0b, _ = build(tmp_path, "format_distillation", FD, name="b", seed=0)
    _, p1, _ = build(tmp_path, "format_distillation", FD, name="c", seed=1)
    ids = lambda p: [r["fewshot_ids"] for r in read_jsonl(p.generations) if r["step"] == "response"]  # noqa: E731
    assert ids(p0) == ids(p0b)
    assert ids(p0) != ids(p1)


@pytest.mark.parametrize("strategy", ["format_distillation", "critique_revision"])
def test_smoke_with_the_real_tiny_model(tmp_path, strategy):
    generate = pytest.importorskip("cai_lib.generate")
    from tiny import tiny_model, tiny_tokenizer

    from cai_lib import guard
    # a fresh tokenizer: the session-wide tiny_tok fixture must keep its chat template for other tests
    tok = tiny_tokenizer()
    tok = guard.strip_chat_template(tok) or tok
    loaded = SimpleNamespace(model=tiny_model(tok), tokenizer=tok)
    items = ITEMS[:3]
    paths = run_paths(tmp_path / "run")
    kept, dropped = pairs.build_pairs(loaded, items, cfg(data_max_new_tokens=6, n_fewshot=1), paths, strategy=strategy,
                                      generate_fn=generate.generate, rotate_fn=fake_rotate, progress=False)
    assert len(kept) + len(dropped) == len(items)
    rows = read_jsonl(paths.generations)
    assert {(r["item_id"], "response") for r in rows} >= {(it["id"], "response") for it in items}
    assert all(r["finish_reason"] in ("eos", "length", "stop") for r in rows)
    assert all(0 < r["new_tokens"] <= 6 for r in rows if r["finish_reason"] == "length")
    stats = read_json(paths.pair_stats)
    assert stats["n_candidates"] == len(items)
    assert sum(stats["dropped_by_reason"].values()) == len(dropped)
    # a rerun on the real model regenerates nothing and gives the same result
    calls = []

    def counting(*a, **k):
        calls.append(a[2])
        return generate.generate(*a, **k)

    again = pairs.build_pairs(loaded, items, cfg(data_max_new_tokens=6, n_fewshot=1), paths, strategy=strategy,
                              generate_fn=counting, rotate_fn=fake_rotate, progress=False)
    assert calls == [] and again == (kept, dropped)


def test_real_fewshot_bank_with_scripted_generation(tmp_path):
    pytest.importorskip("cai_lib.fewshot")
    paths = run_paths(tmp_path / "run")
    kept, dropped = pairs.build_pairs(None, ITEMS, cfg(n_fewshot=3), paths, strategy="critique_revision",
                                      generate_fn=FakeGen(CR), progress=False)  # default rotate_fn: the real bank
    assert len(kept) == 1 and len(dropped) == 5
    rows = read_jsonl(paths.generations)
    assert all(len(r["fewshot_ids"]) == 3 for r in rows)
    from cai_lib.fewshot import FEWSHOT
    known = {prompts.fewshot_id(ex) for steps in FEWSHOT.values() for exs in steps.values() for ex in exs}
    used = pairs.used_fewshot_ids(paths)
    assert used and used <= known  # the leakage guard can map ids back to bank examples


def test_pair_whose_rejected_already_passes_is_dropped_unless_asked(tmp_path):
    script = dict(FD)
    script[(ITEMS[0]["instruction"], "raw")] = (" The capital is Paris.", "eos")  # already correct and stopped
    (kept, dropped), _, _ = build(tmp_path, "format_distillation", script, name="a")
    assert "qa-1" not in {p["item_id"] for p in kept}
    assert next(d for d in dropped if d["item_id"] == "qa-1")["reason"] == "rejected_passes_strict"
    (kept, dropped), _, _ = build(tmp_path, "format_distillation", script, name="b", pair_keep_if_rejected_passes=True)
    p = next(p for p in kept if p["item_id"] == "qa-1")
    assert p["scores"]["rejected"]["strict"] is True and p["rejected"] == "The capital is Paris."
