"""Batched greedy generation on the tiny Gemma 3: finish reasons, order, BOS, OOM back-off."""

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from cai_lib import generate as gen
from cai_lib import guard
from cai_lib.errors import CaiError

PROMPTS = [
    "Q: What is two plus two?\nA:",
    "Hi",
    "Instruction: List three colors.\nResponse:",
    "Complete this sentence: The sky is",
    "Answer this question: What is the capital of France?",
]


@pytest.fixture()
def tok():
    return tiny_tokenizer()


@pytest.fixture()
def lm(tok):
    return tiny_model(tok)


def _force(model, ids_per_step, *, vocab):
    """Make greedy decoding emit `ids_per_step` in order (then keep the last one).

    A hook on lm_head adds a large bias to the wanted id at each decoding step; the
    first call is the prompt's prefill, whose last position yields the first new token.
    """
    step = {"k": 0}

    def hook(_m, _inp, out):
        i = ids_per_step[min(step["k"], len(ids_per_step) - 1)]
        step["k"] += 1
        bias = torch.zeros(vocab, dtype=out.dtype)
        bias[i] = 1e4
        return out + bias

    return model.lm_head.register_forward_hook(hook)


def _ban(model, ids, *, vocab):
    def hook(_m, _inp, out):
        bias = torch.zeros(vocab, dtype=out.dtype)
        bias[list(ids)] = -1e4
        return out + bias
    return model.lm_head.register_forward_hook(hook)


def test_record_fields_and_length_reason(lm, tok):
    _ban(lm, [tok.eos_token_id], vocab=len(tok))
    recs = gen.generate(lm, tok, PROMPTS, max_new_tokens=5, batch_size=2, progress=False)
    assert len(recs) == len(PROMPTS)
    for r, p in zip(recs, PROMPTS):
        assert set(r) == {"response", "finish_reason", "prompt_tokens", "new_tokens", "seconds"}
        assert r["finish_reason"] == "length" and r["new_tokens"] == 5
        assert r["prompt_tokens"] == len(guard.encode_prompts(tok, [p])[0])
        assert r["seconds"] > 0


def test_eos_reason(lm, tok):
    _force(lm, [tok.eos_token_id], vocab=len(tok))
    recs = gen.generate(lm, tok, PROMPTS[:2], max_new_tokens=6, batch_size=2, progress=False)
    for r in recs:
        assert r == {**r, "finish_reason": "eos", "response": "", "new_tokens": 1}


def test_any_generation_config_eos_id_ends(lm, tok):
    other = tok.convert_tokens_to_ids("<end_of_turn>")
    lm.generation_config.eos_token_id = [tok.eos_token_id, other]
    words = tok("red", add_special_tokens=False)["input_ids"]
    _force(lm, words + [other], vocab=len(tok))
    r = gen.generate(lm, tok, ["Colors:"], max_new_tokens=10, progress=False)[0]
    assert r["finish_reason"] == "eos" and r["response"] == "red"
    assert r["new_tokens"] == len(words) + 1


def test_stop_string_cuts_response(lm, tok):
    seq = tok("red, green\nblue sky", add_special_tokens=False)["input_ids"]
    _force(lm, seq, vocab=len(tok))
    recs = gen.generate(lm, tok, PROMPTS[:3], max_new_tokens=20, batch_size=3, stop=["\n"], progress=False)
    n_to_newline = len(tok("red, green\n", add_special_tokens=False)["input_ids"])
    for r in recs:
        assert r["finish_reason"] == "stop"
        assert r["response"] == "red, green"
        assert r["new_tokens"] <= n_to_newline + 1  # stopped early, not at max_new_tokens


def test_eos_before_stop_string_is_eos(lm, tok):
    seq = tok("red", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    _force(lm, seq, vocab=len(tok))
    r = gen.generate(lm, tok, ["x"], max_new_tokens=10, stop=["\n"], progress=False)[0]
    assert r["finish_reason"] == "eos" and r["response"] == "red"


def test_order_preserved_and_equal_to_batch_one(lm, tok):
    """Prompts are length-sorted internally; results come back in input order, and the
    batched greedy text equals batch-1 greedy text on this fp32 model."""
    prompts = PROMPTS + ["A", "Write one sentence about cats and dogs and birds and fish."]
    batched = gen.generate(lm, tok, prompts, max_new_tokens=8, batch_size=3, progress=False)
    single = [gen.generate(lm, tok, [p], max_new_tokens=8, batch_size=1, progress=False)[0] for p in prompts]
    assert [r["prompt_tokens"] for r in batched] == [len(guard.encode_prompts(tok, [p])[0]) for p in prompts]
    assert [r["response"] for r in batched] == [r["response"] for r in single]
    assert len({r["response"] for r in batched}) > 1  # distinct prompts, distinct outputs: order is testable


def test_determinism_check(lm, tok):
    d = gen.determinism_check(lm, tok, PROMPTS, max_new_tokens=6, batch_size=4)
    assert d["n"] == len(PROMPTS) and d["agree"] == d["n"] and d["rate"] == 1.0 and d["mismatches"] == []


def test_determinism_check_reports_mismatches(lm, tok, monkeypatch):
    real = gen.generate

    def flaky(model, tokenizer, prompts, **kw):
        out = real(model, tokenizer, prompts, **kw)
        if kw["batch_size"] > 1:
            out[1]["response"] += " (changed)"
        return out

    monkeypatch.setattr(gen, "generate", flaky)
    d = gen.determinism_check(lm, tok, PROMPTS[:3], max_new_tokens=3, batch_size=3)
    assert d["agree"] == 2 and d["rate"] == pytest.approx(2 / 3)
    assert [m["index"] for m in d["mismatches"]] == [1]


def test_bos_exactly_once_reaches_the_model(lm, tok):
    seen = {}

    def pre(_m, args, kwargs):
        seen.setdefault("ids", kwargs.get("input_ids", args[0] if args else None).clone())

    lm.model.register_forward_pre_hook(pre, with_kwargs=True)
    gen.generate(lm, tok, ["Hi", "Q: What is two plus two?\nA:"], max_new_tokens=1, batch_size=2, progress=False)
    for row in seen["ids"].tolist():
        body = [t for t in row if t != tok.pad_token_id]  # left padding stripped
        assert body[0] == tok.bos_token_id and body.count(tok.bos_token_id) == 1
        assert row[-1] != tok.pad_token_id  # padding is on the left


def test_chat_marker_and_messages_refused_before_generation(lm, tok):
    with pytest.raises(CaiError, match="chat marker"):
        gen.generate(lm, tok, ["ok", "<start_of_turn>user\nhi"], max_new_tokens=2, progress=False)
    with pytest.raises(CaiError, match="chat messages"):
        gen.generate(lm, tok, [[{"role": "user", "content": "hi"}]], max_new_tokens=2, progress=False)


def test_oom_halves_batch_and_keeps_going(lm, tok, monkeypatch):
    real = gen._run_batch
    sizes = []

    def maybe_oom(model, tokenizer, batch_ids, **kw):
        sizes.append(len(batch_ids))
        if len(batch_ids) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, tokenizer, batch_ids, **kw)

    monkeypatch.setattr(gen, "_run_batch", maybe_oom)
    prompts = PROMPTS * 2
    recs = gen.generate(lm, tok, prompts, max_new_tokens=3, batch_size=8, progress=False)
    assert sizes[:3] == [8, 4, 2] and all(s <= 2 for s in sizes[2:])
    assert sum(s for s in sizes if s <= 2) == len(prompts)
    monkeypatch.setattr(gen, "_run_batch", real)
    assert [r["response"] for r in recs] == [r["response"] for r in gen.generate(
        lm, tok, prompts, max_new_tokens=3, batch_size=2, progress=False)]


def test_oom_at_batch_one_is_a_clear_error(lm, tok, monkeypatch):
    def always_oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(gen, "_run_batch", always_oom)
    with pytest.raises(CaiError, match="batch size 1"):
        gen.generate(lm, tok, PROMPTS[:2], max_new_tokens=3, batch_size=2, progress=False)


def test_bad_arguments(lm, tok):
    with pytest.raises(CaiError, match="max_new_tokens"):
        gen.generate(lm, tok, ["x"], max_new_tokens=0, progress=False)
    with pytest.raises(CaiError, match="batch_size"):
        gen.generate(lm, tok, ["x"], max_new_tokens=2, batch_size=0, progress=False)


def test_throughput_helpers(lm, tok):
    recs = gen.generate(lm, tok, PROMPTS, max_new_tokens=4, batch_size=5, progress=False)
    t = gen.throughput(recs)
    assert t["new_tokens"] == sum(r["new_tokens"] for r in recs)
    assert t["tokens_per_s"] == pytest.approx(t["new_tokens"] / t["seconds"])
    m = gen.measure_throughput(lm, tok, PROMPTS, max_new_tokens=2, batch_size=2)
    assert m["batch_size"] == 2 and m["tokens_per_s"] > 0


def test_greedy_even_when_model_config_says_sample(lm, tok):
    """Hub checkpoints often ship do_sample=True (Gemma 3: top_k=64, top_p=0.95); evaluation must stay greedy."""
    ref = gen.generate(lm, tok, PROMPTS, max_new_tokens=6, batch_size=5, progress=False)
    lm.generation_config.do_sample = True
    lm.generation_config.top_k = 50
    lm.generation_config.temperature = 5.0
    for seed in (1, 2):
        torch.manual_seed(seed)
        out = gen.generate(lm, tok, PROMPTS, max_new_tokens=6, batch_size=5, progress=False)
        assert [r["response"] for r in out] == [r["response"] for r in ref]
    # and greedy means argmax: the first new token of each prompt is the argmax of the prompt's logits
    for p, r in zip(PROMPTS, ref):
        ids = torch.tensor([guard.encode_prompts(tok, [p])[0]])
        with torch.no_grad():
            first = int(lm(input_ids=ids).logits[0, -1].argmax())
        first_text = tok.decode([first], skip_special_tokens=True)
        assert r["response"].startswith(first_text)
