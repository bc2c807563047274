import json
import random
from types import SimpleNamespace

import pytest

from cai_lib import pair_generation, pairs, prompts
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
    # the file holds the TRL text (separator + answer) and the raw answers (pairs.trl_record)
    assert read_jsonl(paths.preference_pairs) == [pairs.trl_record(p, False) for p in kept]
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


def _used_fewshot_ids(paths) -> set:
    """Ids of every few-shot example the run's generations record."""
    return {i for row in read_jsonl(paths.generations) for i in row.get("fewshot_ids", [])}


def test_generations_record_the_fewshot_ids_pairs_carry(tmp_path):
    (kept, _), paths, _ = build(tmp_path, "critique_revision", CR, pair_keep_if_rejected_passes=True)
    assert {p["item_id"] for p in kept} == {"qa-1", "qa-2"}
    assert all(p["prompt"] and p["chosen"] and p["rejected"] and p["critique"] for p in kept)
    ids = _used_fewshot_ids(paths)
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
    used = _used_fewshot_ids(paths)
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


# ---- self_consistency (issue 12) ---------------------------------------------------------------

class FakeSampler:
    """k scripted samples per instruction; records each call's seed and prompts."""

    def __init__(self, script):
        self.script, self.calls = script, []

    def __call__(self, model, tokenizer, prompts_, *, k, temperature, max_new_tokens, stop=None, seed=0):
        self.calls.append({"prompts": list(prompts_), "k": k, "temperature": temperature, "seed": seed})
        out = []
        for p in prompts_:
            instr, step = _instruction_and_step(p)
            assert step == "response"  # samples answer the same few-shot prompt as the greedy answer
            recs = []
            for text, fr in self.script[instr][:k]:
                cut, hit = prompts.cut_at_stop(text, stop or [])
                recs.append({"response": cut, "finish_reason": "stop" if hit else fr, "new_tokens": len(text.split())})
            out.append(recs)
        return out


I = {it["id"]: it["instruction"] for it in ITEMS}
SC_GREEDY = {
    (I["qa-1"], "response"): (" Lyon.\n\n", "length"),        # greedy wrong: the samples rescue it
    (I["qa-2"], "response"): (" blue.\n\n", "length"),        # never right
    (I["qa-3"], "response"): (" 4.\n\n", "length"),           # greedy right
    (I["co-1"], "response"): (" green.\n\n", "length"),       # wrong; samples tie 2-2
    (I["ge-1"], "response"): (" Cats purr.\n\n", "length"),   # right
    (I["re-1"], "response"): (" No.\n\n", "length"),          # yes-item answered no
}
SC_RAW = {(instr, "raw"): (" and then it goes on and on without an end", "length") for instr in I.values()}
SC_SAMPLES = {
    I["qa-1"]: [(" Paris.\n\n", "length"), (" Paris is the capital.\n\n", "length"), (" Lyon.\n\n", "length"),
                (" Rome.\n\n", "length")],
    I["qa-2"]: [(" Quito.\n\n", "length"), ("", "eos"), (" Quito.\n\n", "length"), (" La Paz.\n\n", "length")],
    I["qa-3"]: [(" Five.\n\n", "length"), (" 4.\n\n", "length"), (" 4\n\n", "length"), (" Four, because 2+2.\n\n", "length")],
    I["co-1"]: [(" bright blue.\n\n", "length"), (" blue.\n\n", "length"), (" blue.\n\n", "length"),
                (" bright blue.\n\n", "length")],
    I["ge-1"]: [("", "eos"), (" Cats purr. Dogs bark.\n\n", "length"), (" Cats purr.\n\n", "length"),
                (" Cats nap all day and then", "length")],
    I["re-1"]: [(" Yes.\n\n", "length"), (" Yes.\n\n", "length"), (" No.\n\n", "length"), (" Yes, it is.\n\n", "length")],
}


def build_sc(tmp_path, name="sc", sampler=None, **kw):
    paths = run_paths(tmp_path / name)
    sampler = sampler or FakeSampler(SC_SAMPLES)
    out = pairs.build_pairs(None, ITEMS, cfg(**{"pair_sc_k": 4, **kw}), paths, strategy="self_consistency",
                            generate_fn=FakeGen({**SC_GREEDY, **SC_RAW}), rotate_fn=fake_rotate,
                            sample_fn=sampler, progress=False)
    return out, paths, sampler


def test_self_consistency_vote_chooses_the_verified_majority(tmp_path):
    (kept, dropped), paths, sampler = build_sc(tmp_path)
    raw_pairs = {p["item_id"]: p for p in kept if p["pair_type"] == "raw_continuation"}
    # qa-1: greedy "Lyon." is wrong; verified "Paris." (sample0) and "Paris is the capital." (sample1)
    # share the key only as text, so each is its own group of 1: tie -> earliest sample
    assert raw_pairs["qa-1"]["chosen"] == "Paris."
    assert raw_pairs["qa-1"]["vote"]["chosen_source"] == "sample0"
    assert raw_pairs["qa-1"]["vote"]["greedy_verified"] is False
    # qa-3 (number item): "4." greedy, "4." and "4" are the answer 4 (3 votes, greedy's text); "Four,
    # because 2+2." reads as 2 (the scorer takes the last number), so it is a wrong sample
    assert raw_pairs["qa-3"]["chosen"] == "4." and raw_pairs["qa-3"]["vote"]["votes"] == 3
    assert raw_pairs["qa-3"]["vote"]["key"] == "number:4"
    assert raw_pairs["qa-3"]["vote"]["chosen_source"] == "greedy"
    # co-1: "bright blue." x2 vs "blue." x2, greedy in neither -> the group that appeared first
    assert raw_pairs["co-1"]["chosen"] == "bright blue."
    # re-1: yes-item, greedy "No." is wrong, three samples say yes
    assert raw_pairs["re-1"]["chosen"] == "Yes." and raw_pairs["re-1"]["vote"]["votes"] == 3
    assert raw_pairs["re-1"]["vote"]["agreement"] == 0.6  # 3 of 5 finished candidates
    # qa-2: no verified candidate -> dropped with the greedy answer's reasons
    assert next(d for d in dropped if d["item_id"] == "qa-2")["reason"] == "chosen_fails_strict"
    assert all(p["chosen"].strip() for p in kept)  # no empty chosen, though empty samples exist
    # seeds: one per slice of items, from the run seed and the slice's ids; recorded on each row
    rows = [r for r in read_jsonl(paths.generations) if r["step"] == "sample"]
    assert {r["seed"] for r in rows} == {c["seed"] for c in sampler.calls}
    assert all(c["k"] == 4 and c["temperature"] == 0.7 for c in sampler.calls)
    assert all(len(c["prompts"]) == 1 for c in sampler.calls)  # gen_batch_size 2 // k 4 -> 1 prompt per call
    first = sampler.calls[0]
    ids = [next(it["id"] for it in ITEMS if it["instruction"] == _instruction_and_step(first["prompts"][0])[0])]
    assert first["seed"] == pair_generation.slice_seed(0, ids)


def test_vote_tie_goes_to_the_greedy_group_and_is_deterministic():
    it = ITEMS[3]  # "The sky is" / contains blue

    def c(i, text):
        return {"source": "greedy" if i == 0 else f"sample{i - 1}", "index": i, "text": text, "fr": "stop",
                "score": pair_generation.score_answer(it, text, "stop")}

    cands = [c(0, "blue."), c(1, "bright blue."), c(2, "bright blue."), c(3, "blue."), c(4, "red.")]
    v = pairs.vote(it, cands)
    assert v["chosen"]["source"] == "greedy" and v["votes"] == 2
    for seed in range(5):  # the order candidates arrive in does not decide the vote
        shuffled = random.Random(seed).sample(cands, len(cands))
        assert pairs.vote(it, shuffled)["chosen"]["source"] == "greedy"
    # without the greedy answer the 2-2 tie goes to the group that appeared first
    tie = cands[1:] + [c(5, "blue.")]  # bright blue x2 (first at 1) vs blue x2 (first at 3)
    assert pairs.vote(it, tie)["chosen"]["source"] == "sample0" and pairs.vote(it, tie)["votes"] == 2
    # an unfinished or empty answer never wins, even if it would pass the checks' words
    cands = [{**c(0, "blue and on and on"), "fr": "length"}, c(1, ""), c(2, "red.")]
    assert pairs.vote(it, cands)["chosen"] is None


def test_self_consistency_wrong_samples_are_length_matched_rejected(tmp_path):
    (kept, _), paths, _ = build_sc(tmp_path, pair_sc_max_wrong=2)
    wrong = [p for p in kept if p["pair_type"] in ("wrong_sample", "empty_rejected") and p["strategy"] == "self_consistency"]
    by_item = {}
    for p in wrong:
        by_item.setdefault(p["item_id"], []).append(p)
    # qa-1: "Lyon." (greedy, 1 word vs "Paris." 1 word: matched) first, then "Rome."
    assert [p["rejected"] for p in by_item["qa-1"]] == ["Lyon.", "Rome."]
    assert all(p["scores"]["rejected"]["strict"] is False for p in wrong)
    # ge-1: the two-sentence answer first; the EOS-immediately sample last, kept as an empty_rejected pair
    assert [(p["pair_type"], p["rejected"]) for p in by_item["ge-1"]] == [
        ("wrong_sample", "Cats purr. Dogs bark."), ("empty_rejected", "")]
    # re-1: the wrong "No." against "Yes." — same length, opposite answer
    assert [p["rejected"] for p in by_item["re-1"]] == ["No."]
    stats = read_json(paths.pair_stats)
    pt = stats["pair_types"]
    assert pt["raw_continuation"]["share_chosen_shorter"] == 1.0 and pt["raw_continuation"]["share_length_matched"] == 0
    assert pt["wrong_sample"]["share_length_matched"] >= 0.5
    assert pt["wrong_sample"]["pair_correct"] == 1.0
    assert stats["share_length_matched"] > 0.3
    assert stats["vote"]["rescued_by_samples"] == 3  # qa-1, co-1, re-1
    assert stats["empty_chosen"] == 0
    sc = stats["by_strategy"]["self_consistency"]
    assert sc["items_with_pair"] == 5 and sc["keep_rate_items"] == round(5 / 6, 4)
    # pair_sc_max_wrong=0 gives format_distillation's shape with voted chosen answers
    (kept0, _), _, _ = build_sc(tmp_path, name="sc0", pair_sc_max_wrong=0)
    assert {p["pair_type"] for p in kept0} == {"raw_continuation"}


def test_self_consistency_resume_reuses_samples_and_refuses_other_k(tmp_path):
    (kept, _), paths, s1 = build_sc(tmp_path, name="r")
    (again, _), _, s2 = build_sc(tmp_path, name="r")
    assert again == kept and s2.calls == []  # every slice was stored: nothing re-sampled
    with pytest.raises(CaiError, match="pair_sc_k"):
        build_sc(tmp_path, name="r", pair_sc_k=3)


def test_balance_drops_the_dominant_answer_class(tmp_path):
    yes = [item(f"y{i}", "response", f"Respond with yes or no: Is thing {i} real?", [{"kind": "yes_no", "value": "yes"}])
           for i in range(6)]
    no = [item(f"n{i}", "response", f"Respond with yes or no: Is thing {i} fake?", [{"kind": "yes_no", "value": "no"}])
          for i in range(6)]
    items = yes + no
    script = {}
    for it in items:  # a yes-biased model: "Yes." to everything, so only yes-items keep a pair
        script[(it["instruction"], "response")] = (" Yes.\n\n", "length")
        script[(it["instruction"], "raw")] = (" Yes and more and more", "length")
    script[(no[0]["instruction"], "response")] = (" No.\n\n", "length")  # one no-item answered right
    c = cfg(pair_balance=True, pair_balance_tolerance=0.05)
    paths = run_paths(tmp_path / "bal")
    kept, dropped = pairs.build_pairs(None, items, c, paths, strategy="format_distillation", generate_fn=FakeGen(script),
                                      rotate_fn=fake_rotate, progress=False)
    assert sorted(p["chosen"] for p in kept) == ["No.", "Yes."]  # 1 no -> at most 1 yes (share 0.5 <= 0.55)
    assert sum(d["reason"] == "rebalanced" for d in dropped) == 5
    stats = read_json(paths.pair_stats)
    assert stats["balance"] == {"enabled": True, "tolerance": 0.05, "dropped": 5}
    assert not stats["answer_skew"]["chosen_vs_pool"]["flagged"]
    # without balancing the same pairs are flagged as skewed
    kept2, _ = pairs.build_pairs(None, items, cfg(), run_paths(tmp_path / "unbal"), strategy="format_distillation",
                                 generate_fn=FakeGen(script), rotate_fn=fake_rotate, progress=False)
    assert len(kept2) == 7
    assert read_json(run_paths(tmp_path / "unbal").pair_stats)["skew_flagged"] is True


def test_sample_generate_on_the_tiny_model_is_seeded(tiny_tok):
    from tiny import tiny_model
    from cai_lib.sampling import sample_generate
    model = tiny_model(tiny_tok, seed=0)
    kw = dict(k=3, temperature=0.7, max_new_tokens=5, stop=["\n\n"])
    a = sample_generate(model, tiny_tok, ["Hello there", "A longer prompt here"], seed=7, **kw)
    b = sample_generate(model, tiny_tok, ["Hello there", "A longer prompt here"], seed=7, **kw)
    assert a == b and len(a) == 2 and all(len(x) == 3 for x in a)
    assert all(r["finish_reason"] in ("eos", "length", "stop") for x in a for r in x)
    c = sample_generate(model, tiny_tok, ["Hello there", "A longer prompt here"], seed=8, **kw)
    assert c != a  # another seed draws other samples (5 tokens x 6 rows: a collision is vanishingly rare)
    with pytest.raises(CaiError, match="temperature"):
        sample_generate(model, tiny_tok, ["x"], seed=0, k=1, temperature=0, max_new_tokens=2)


def test_sample_generate_static_cache_pads_rows_and_keeps_the_real_ones(tiny_tok):
    """A static cache pads the batch to batch_rows; only the real prompts' k samples come back,
    seeded as reproducibly as on the dynamic cache."""
    from tiny import tiny_model
    from cai_lib.sampling import sample_generate
    model = tiny_model(tiny_tok, seed=0)
    kw = dict(k=2, temperature=0.7, max_new_tokens=4, seed=3, cache="static", batch_rows=8)
    a = sample_generate(model, tiny_tok, ["Hello there", "A longer prompt here"], **kw)
    b = sample_generate(model, tiny_tok, ["Hello there", "A longer prompt here"], **kw)
    assert a == b and len(a) == 2 and all(len(x) == 2 for x in a)
    assert all(1 <= r["new_tokens"] <= 4 for x in a for r in x)
    # greedy-like check of the padding: at temperature -> 0 the static and dynamic rows agree
    cold = dict(k=2, temperature=1e-4, max_new_tokens=4, seed=3)
    dyn = sample_generate(model, tiny_tok, ["Hello there", "A longer prompt here"], cache="dynamic", **cold)
    sta = sample_generate(model, tiny_tok, ["Hello there", "A longer prompt here"], cache="static", batch_rows=8, **cold)
    assert [[r["response"] for r in x] for x in sta] == [[r["response"] for r in x] for x in dyn]
