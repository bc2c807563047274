"""Stage 00's contamination sentinels: schema, meaningful checks, generation in eval format."""

from cai_lib import baseline


def test_sentinel_items_follow_the_item_schema():
    from cai_lib.items import validate_item
    ids = [it["id"] for it in baseline.SENTINEL_PROMPTS]
    assert len(ids) == len(set(ids)) >= 2
    texts = {it["instruction"] for it in baseline.SENTINEL_PROMPTS}
    assert {"Translate to Pig Latin: hello world", "List three prime numbers:"} <= texts
    for it in baseline.SENTINEL_PROMPTS:
        validate_item(it, f"sentinel {it['id']}")


def test_sentinel_checks_judge_an_obedient_answer():
    """The checks are meaningful: an obeying answer passes, a base-model continuation fails."""
    from cai_lib.scoring import score_record
    by_id = {it["id"]: it for it in baseline.SENTINEL_PROMPTS}
    good = score_record({**by_id["sentinel-primes"], "response": " 2, 3 and 5.", "finish_reason": "eos"})
    assert good["strict"], good["failures"]
    bad = score_record({**by_id["sentinel-primes"],
                        "response": "\nList three even numbers:\nList three odd numbers:", "finish_reason": "length"})
    assert not bad["strict"]
    pig = score_record({**by_id["sentinel-piglatin"], "response": " ellohay orldway", "finish_reason": "eos"})
    assert pig["strict"], pig["failures"]


def test_run_sentinels(tiny_model_dir):
    from cai_lib.models import load_base
    loaded = load_base(str(tiny_model_dir))
    recs = baseline.run_sentinels(loaded, max_new_tokens=4)
    assert [r["id"] for r in recs] == [it["id"] for it in baseline.SENTINEL_PROMPTS]
    for r, it in zip(recs, baseline.SENTINEL_PROMPTS):
        assert r["prompt"] == it["instruction"]  # evaluation format: the raw instruction
        assert r["finish_reason"] in ("eos", "length", "stop") and isinstance(r["response"], str)
        assert 1 <= r["new_tokens"] <= 4
