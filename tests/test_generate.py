"""Batched greedy generation on the tiny Gemma 3: finish reasons, order, BOS, OOM back-off,
both KV caches (dynamic and static), bucketing, fallback and the comparability certificate."""

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


@pytest.fixture(params=["dynamic", "static"])
def cache(request):
    """Finish reasons and stop strings must come out the same with either KV cache."""
    return request.param


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


def test_record_fields_and_length_reason(lm, tok, cache):
    _ban(lm, [tok.eos_token_id], vocab=len(tok))
    recs = gen.generate(lm, tok, PROMPTS, max_new_tokens=5, batch_size=2, progress=False, cache=cache)
    assert len(recs) == len(PROMPTS)
    for r, p in zip(recs, PROMPTS):
        assert set(r) == {"response", "finish_reason", "prompt_tokens", "new_tokens", "seconds"}
        assert r["finish_reason"] == "length" and r["new_tokens"] == 5
        assert r["prompt_tokens"] == len(guard.encode_prompts(tok, [p])[0])
        assert r["seconds"] > 0


def test_eos_reason(lm, tok, cache):
    _force(lm, [tok.eos_token_id], vocab=len(tok))
    recs = gen.generate(lm, tok, PROMPTS[:2], max_new_tokens=6, batch_size=2, progress=False, cache=cache)
    for r in recs:
        assert r == {**r, "finish_reason": "eos", "response": "", "new_tokens": 1}


def test_any_generation_config_eos_id_ends(lm, tok, cache):
    other = tok.convert_tokens_to_ids("<end_of_turn>")
    lm.generation_config.eos_token_id = [tok.eos_token_id, other]
    words = tok("red", add_special_tokens=False)["input_ids"]
    _force(lm, words + [other], vocab=len(tok))
    r = gen.generate(lm, tok, ["Colors:"], max_new_tokens=10, progress=False, cache=cache)[0]
    assert r["finish_reason"] == "eos" and r["response"] == "red"
    assert r["new_tokens"] == len(words) + 1


def test_stop_string_cuts_response(lm, tok, cache):
    seq = tok("red, green\nblue sky", add_special_tokens=False)["input_ids"]
    _force(lm, seq, vocab=len(tok))
    recs = gen.generate(lm, tok, PROMPTS[:3], max_new_tokens=20, batch_size=3, stop=["\n"], progress=False,
                        cache=cache)
    n_to_newline = len(tok("red, green\n", add_special_tokens=False)["input_ids"])
    for r in recs:
        assert r["finish_reason"] == "stop"
        assert r["response"] == "red, green"
        assert r["new_tokens"] <= n_to_newline + 1  # stopped early, not at max_new_tokens


def test_eos_before_stop_string_is_eos(lm, tok, cache):
    seq = tok("red", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    _force(lm, seq, vocab=len(tok))
    r = gen.generate(lm, tok, ["x"], max_new_tokens=10, stop=["\n"], progress=False, cache=cache)[0]
    assert r["finish_reason"] == "eos" and r["response"] == "red"


def test_order_preserved_and_equal_to_batch_one(lm, tok, cache):
    """Prompts are length-sorted internally; results come back in input order, and the
    batched greedy text equals batch-1 greedy text on this fp32 model."""
    prompts = PROMPTS + ["A", "Write one sentence about cats and dogs and birds and fish."]
    batched = gen.generate(lm, tok, prompts, max_new_tokens=8, batch_size=3, progress=False, cache=cache)
    single = [gen.generate(lm, tok, [p], max_new_tokens=8, batch_size=1, progress=False, cache=cache)[0]
              for p in prompts]
    assert [r["prompt_tokens"] for r in batched] == [len(guard.encode_prompts(tok, [p])[0]) for p in prompts]
    assert [r["response"] for r in batched] == [r["response"] for r in single]
    assert len({r["response"] for r in batched}) > 1  # distinct prompts, distinct outputs: order is testable


def test_determinism_check(lm, tok, cache):
    d = gen.determinism_check(lm, tok, PROMPTS, max_new_tokens=6, batch_size=4, cache=cache)
    assert d["n"] == len(PROMPTS) and d["agree"] == d["n"] and d["rate"] == 1.0 and d["mismatches"] == []
    assert d["cache"] == cache


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


def test_throughput_helper(lm, tok):
    recs = gen.generate(lm, tok, PROMPTS, max_new_tokens=4, batch_size=5, progress=False)
    t = gen.throughput(recs)
    assert t["new_tokens"] == sum(r["new_tokens"] for r in recs)
    assert t["tokens_per_s"] == pytest.approx(t["new_tokens"] / t["seconds"])


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


# ---- KV cache choice, bucketing, fallback ------------------------------------------------


def test_buckets_are_full_batches_and_power_of_two_lengths():
    assert [gen.batch_bucket(n, 64) for n in (1, 2, 3, 5, 33, 64)] == [64] * 6  # one shape per batch size
    with pytest.raises(CaiError, match="exceed"):
        gen.batch_bucket(65, 64)
    assert gen.MIN_CACHE_LEN == 512
    assert [gen.cache_bucket(n) for n in (1, 100, 512, 513, 1000, 1025)] == [512, 512, 512, 1024, 1024, 2048]


def test_static_pads_rows_and_cache_to_buckets(lm, tok):
    info = {}
    prompts = PROMPTS + ["A", "B"]  # 7 prompts at batch 8: one batch padded to 8 rows
    gen.generate(lm, tok, prompts, max_new_tokens=4, batch_size=8, progress=False, cache="static", info=info)
    assert info["cache"] == "static" and info["padded_rows"] == 1 and info["shapes"] == [(8, 512)]
    assert info["compiled"] is False  # CPU: transformers compiles nothing
    info = {}
    long = " ".join(["word"] * 200)  # prompt + new tokens > 512: the next bucket
    width = len(guard.encode_prompts(tok, [long])[0])
    assert 512 < width + 4 <= 1024
    gen.generate(lm, tok, [long] + PROMPTS[:2], max_new_tokens=4, batch_size=2, progress=False,
                 cache="static", info=info)
    # the second batch's prompts are short, but transformers keeps the longer cache; the
    # 1-prompt last batch is padded to the batch size: one shape for the whole call
    assert info["shapes"] == [(2, 1024)] and info["padded_rows"] == 1


def test_dynamic_does_not_pad(lm, tok):
    info = {}
    gen.generate(lm, tok, PROMPTS, max_new_tokens=3, batch_size=4, progress=False, cache="dynamic", info=info)
    assert info["padded_rows"] == 0 and sorted(s[0] for s in info["shapes"]) == [1, 4]


def test_static_equals_dynamic_and_padding_rows_add_no_steps(lm, tok):
    prompts = PROMPTS + ["Write one sentence about cats and dogs."]
    runs = {}
    for c in ("dynamic", "static"):
        info = {}
        runs[c] = gen.generate(lm, tok, prompts, max_new_tokens=7, batch_size=4, progress=False, cache=c, info=info)
        runs[c + "_info"] = info
    assert runs["static"] == [{**r, "seconds": s["seconds"]} for r, s in zip(runs["dynamic"], runs["static"])]
    # 6 prompts at batch 4: batches of 4 and 2; static pads the 2 to 4 rows, which add no steps
    assert runs["dynamic_info"]["row_steps"] == 6 * 7 and runs["static_info"]["row_steps"] == 8 * 7
    assert runs["static_info"]["steps"] == runs["dynamic_info"]["steps"] == 2 * 7
    assert runs["dynamic_info"]["row_step_use"] == 1.0


def test_early_finished_rows_are_counted(lm, tok):
    """One row stops at once, its batch-mate runs to the limit: row_step_use shows the waste."""
    eos = tok.eos_token_id
    step = {"k": 0}

    def hook(_m, _inp, out):  # row 0 (longest prompt, sorted first) gets eos at step 0, row 1 never
        bias = torch.zeros_like(out)
        if step["k"] == 0:
            bias[0, -1, eos] = 1e4
        bias[1:, -1, eos] = -1e4
        step["k"] += 1
        return out + bias

    lm.lm_head.register_forward_hook(hook)
    info = {}
    recs = gen.generate(lm, tok, [PROMPTS[2], "Hi"], max_new_tokens=5, batch_size=2, progress=False, info=info)
    assert [r["new_tokens"] for r in recs] == [1, 5]
    assert info["row_steps"] == 10 and info["row_step_use"] == pytest.approx(6 / 10)


def test_pick_cache_choices(lm):
    kind, why = gen.pick_cache(lm, "auto", decode_steps=10**6)  # CPU: measured (see pick_cache)
    assert kind == "dynamic" and why == gen.CPU_MEASURE
    assert gen.pick_cache(lm, "static") == ("static", "requested")
    assert gen.pick_cache(lm, "dynamic") == ("dynamic", "requested")
    with pytest.raises(CaiError, match="gen_cache"):
        gen.pick_cache(lm, "paged")


class _FakeCuda:
    """Just enough of a model for pick_cache's decision on a CUDA device."""
    device = torch.device("cuda")
    hf_quantizer = None

    def __init__(self, bits=None):
        if bits:
            setattr(self, f"is_loaded_in_{bits}", True)
            self.hf_quantizer = type("Q", (), {"is_compileable": False})()


def test_pick_cache_on_cuda_static_unless_bitsandbytes():
    assert gen.pick_cache(_FakeCuda(), "auto")[0] == "static"
    # compilation must pay for itself: too few steps for the shapes it would compile -> dynamic
    n = gen.STATIC_MIN_STEPS
    assert gen.pick_cache(_FakeCuda(), "auto", decode_steps=n, shapes=1)[0] == "static"
    kind, why = gen.pick_cache(_FakeCuda(), "auto", decode_steps=2 * n - 1, shapes=2)
    assert kind == "dynamic" and "do not pay" in why
    assert gen.pick_cache(_FakeCuda(), "static", decode_steps=1) == ("static", "requested")
    # a shape this process already compiled costs nothing: static however short the call
    kind, why = gen.pick_cache(_FakeCuda(), "auto", decode_steps=1, shapes=0)
    assert kind == "static" and "already compiled" in why
    assert gen.compiles_decoding(_FakeCuda())
    for bits in ("4bit", "8bit"):
        kind, why = gen.pick_cache(_FakeCuda(bits), "auto")
        assert kind == "dynamic" and bits in why and not gen.compiles_decoding(_FakeCuda(bits))


def _static_breaks(model):
    real = model.generate

    def generate(*a, **kw):
        if kw["generation_config"].cache_implementation == "static":
            raise RuntimeError("static cache not supported (simulated)\nsecond line")
        return real(*a, **kw)

    model.generate = generate


def test_auto_falls_back_to_dynamic_when_static_fails(lm, tok, monkeypatch):
    ref = gen.generate(lm, tok, PROMPTS, max_new_tokens=4, batch_size=2, progress=False, cache="dynamic")
    _static_breaks(lm)
    monkeypatch.setattr(gen, "pick_cache", lambda model, requested, **kw: ("static", "test: as on CUDA"))
    info = {}
    recs = gen.generate(lm, tok, PROMPTS, max_new_tokens=4, batch_size=2, progress=False, cache="auto", info=info)
    assert info["cache"] == "dynamic" and info["fallback"] == "static cache not supported (simulated)"
    assert [r["response"] for r in recs] == [r["response"] for r in ref]


def test_explicit_static_failure_is_one_clear_error(lm, tok):
    _static_breaks(lm)
    with pytest.raises(CaiError, match="gen_cache: static failed .*simulated.*gen_cache: dynamic"):
        gen.generate(lm, tok, PROMPTS, max_new_tokens=4, batch_size=2, progress=False, cache="static")


def test_oom_back_off_with_static_cache(lm, tok, monkeypatch):
    real = gen._run_batch
    padded = []

    def maybe_oom(model, tokenizer, batch_ids, **kw):
        padded.append(kw["pad_rows_to"])
        if kw["pad_rows_to"] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, tokenizer, batch_ids, **kw)

    monkeypatch.setattr(gen, "_run_batch", maybe_oom)
    recs = gen.generate(lm, tok, PROMPTS, max_new_tokens=3, batch_size=4, progress=False, cache="static")
    assert padded[:2] == [4, 4] or padded[:2] == [4, 2]
    assert all(p <= 2 for p in padded[padded.index(2):]) and len(recs) == len(PROMPTS)


# ---- comparability certificate ----------------------------------------------------------

ITEMS = [{"id": f"i{k}", "type": "t", "instruction": p, "checks": []} for k, p in enumerate(PROMPTS)]


def test_certificate_identical_on_fp32(lm, tok, cache):
    c = gen.comparability_certificate(lm, tok, ITEMS, max_new_tokens=5, batch_size=4, cache=cache)
    assert c["n"] == 5 and c["identical"] == 5 and c["identical_rate"] == 1.0 and not c["flagged"]
    assert c["cache"] == cache and c["batched"] == c["batch1"]
    assert c["delta"] == {"strict": 0.0, "loose": 0.0, "form": 0.0} and c["flips"] == {"strict": 0, "loose": 0, "form": 0}


def test_certificate_counts_rate_moves(lm, tok, monkeypatch):
    """A batched response that changes enough to flip its score moves the rates and flags the run."""
    _ban(lm, [tok.eos_token_id], vocab=len(tok))  # every response runs to `length`: strict fails
    real = gen.generate

    def batched_differs(model, tokenizer, prompts, **kw):
        out = real(model, tokenizer, prompts, **kw)
        if kw["batch_size"] > 1:  # row 1 "stops" in the batched run only
            out[1] = {**out[1], "response": "Paris.", "finish_reason": "eos"}
        return out

    monkeypatch.setattr(gen, "generate", batched_differs)
    c = gen.comparability_certificate(lm, tok, ITEMS, max_new_tokens=3, batch_size=4, sample=4)
    assert c["n"] == 4 and c["identical"] == 3 and c["flagged"]  # 1 of 4 differs > 5 %
    assert c["flips"]["strict"] == 1 and c["delta"]["strict"] == pytest.approx(0.25)
    assert [m["index"] for m in c["mismatches"]] == [1]


def test_certificate_refuses_items_without_checks(lm, tok):
    with pytest.raises(CaiError, match="checks"):
        gen.comparability_certificate(lm, tok, [{"instruction": "x"}], max_new_tokens=2, batch_size=2)


# ---- generation quantization (models.quantization_for) ----------------------------------


def test_generation_quantization_follows_the_knob():
    from types import SimpleNamespace

    from cai_lib.models import quantization_for

    cfg = SimpleNamespace(quantization="4bit", gen_quantization="as_train")
    assert quantization_for(cfg, "generate") == "4bit" and quantization_for(cfg, "train") == "4bit"
    cfg.gen_quantization = "none"
    assert quantization_for(cfg, "generate") == "none" and quantization_for(cfg, "train") == "4bit"
    assert quantization_for(SimpleNamespace(quantization="8bit"), "generate") == "8bit"  # older config: as_train
    with pytest.raises(CaiError, match="gen_quantization"):
        quantization_for(SimpleNamespace(quantization="none", gen_quantization="2bit"), "generate")


# ---- CUDA ---------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_static_compiles_and_matches_dynamic(tok):
    model = tiny_model(tok).to("cuda")
    assert gen.pick_cache(model, "auto")[0] == "static"
    prompts = PROMPTS * 3  # too few steps for auto to compile: ask for static
    dyn = gen.generate(model, tok, prompts, max_new_tokens=6, batch_size=4, progress=False, cache="dynamic")
    info = {}
    sta = gen.generate(model, tok, prompts, max_new_tokens=6, batch_size=4, progress=False, cache="static", info=info)
    assert info["cache"] == "static" and info["compiled"] and info["fallback"] is None
    assert info["shapes"] == [(4, 512)]  # 15 prompts at batch 4: the last 3 padded to 4, one shape
    # this process compiled (4, 512): auto now takes static even for a call too short to pay
    assert gen.static_plan(model, 4, 10, 6) == (512, 0)
    info = {}
    gen.generate(model, tok, PROMPTS[:2], max_new_tokens=2, batch_size=4, progress=False, cache="auto", info=info)
    assert info["cache"] == "static" and "already compiled" in info["cache_reason"]
    assert [r["response"] for r in sta] == [r["response"] for r in dyn]  # fp32: same greedy text



# ---- one compiled graph per shape: the static cache's fill level marked dynamic ------------------

@pytest.fixture()
def dynamic_sources():
    """torch.compiler.config.dynamic_sources restored after the test (a process-wide setting;
    pytest's monkeypatch cannot restore a torch config module's attribute)."""
    saved = torch.compiler.config.dynamic_sources
    yield
    torch.compiler.config.dynamic_sources = saved


def test_fill_level_marking_keeps_user_sources_and_is_idempotent(tok, dynamic_sources):
    from cai_lib import kv_cache
    torch.compiler.config.dynamic_sources = "L['x']"  # a user's own entry
    model = tiny_model(tok, layers=3)
    kv_cache.mark_fill_level_dynamic(model)
    first = torch.compiler.config.dynamic_sources
    kv_cache.mark_fill_level_dynamic(model)
    assert torch.compiler.config.dynamic_sources == first  # nothing added twice
    entries = first.split(",")
    assert entries[0] == "L['x']" and entries[1:] == kv_cache.fill_level_sources(3)
    assert "L['kwargs']['cache'].layers[2].cumulative_length_int" in entries


def _decoding_graphs(model, tok, mark: bool) -> tuple[int, list]:
    """Dynamo graphs traced for one static-cache generate() call, compiled on CPU as on CUDA."""
    from torch._dynamo.utils import counters
    from transformers import CompileConfig, GenerationConfig

    from cai_lib import kv_cache
    torch.compiler.config.dynamic_sources = ""
    if mark:
        kv_cache.mark_fill_level_dynamic(model)
    torch._dynamo.reset()
    counters.clear()
    compile_cfg = CompileConfig()
    compile_cfg._compile_all_devices = True  # transformers compiles generate() on CUDA only unless told
    cfg = GenerationConfig(max_new_tokens=5, do_sample=False, cache_implementation="static", max_cache_len=512,
                           compile_config=compile_cfg, eos_token_id=None, pad_token_id=tok.pad_token_id)
    ids, attn = gen.left_pad(model, [tok.encode("one two three"), tok.encode("four five")], tok.pad_token_id)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=attn, generation_config=cfg)
    graphs = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    return graphs, out.tolist()


def test_fill_level_marked_dynamic_compiles_the_decoding_step_once(tok, dynamic_sources):
    """Unmarked, dynamo traces the step with the cache's fill level as a constant and again one
    step later with it symbolic; marked (what generate() does before a compiled static call)
    it traces once, and decodes the same tokens. Fails if transformers renames the attribute or
    the cache keyword, which would silently bring the second compilation back."""
    model = tiny_model(tok, seed=0)
    marked, out_marked = _decoding_graphs(model, tok, mark=True)
    unmarked, out_unmarked = _decoding_graphs(model, tok, mark=False)
    assert (marked, unmarked) == (1, 2)
    assert out_marked == out_unmarked


def test_generate_marks_the_fill_level_before_a_compiled_static_call(tok, dynamic_sources, monkeypatch):
    """generate() marks it when transformers will compile (CUDA); never for the dynamic cache."""
    from cai_lib import kv_cache
    model = tiny_model(tok, seed=0)
    torch.compiler.config.dynamic_sources = ""
    gen.generate(model, tok, ["one two"], max_new_tokens=2, batch_size=1, progress=False, cache="static")
    assert torch.compiler.config.dynamic_sources == ""  # CPU: nothing is compiled, nothing marked
    monkeypatch.setattr(kv_cache, "compiles_decoding", lambda m: True)  # as on CUDA
    gen.generate(model, tok, ["one two"], max_new_tokens=2, batch_size=1, progress=False, cache="dynamic")
    assert torch.compiler.config.dynamic_sources == ""
    gen.generate(model, tok, ["one two"], max_new_tokens=2, batch_size=1, progress=False, cache="static")
    assert torch.compiler.config.dynamic_sources.split(",") == kv_cache.fill_level_sources(2)
