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


def test_run_baseline_times_each_part(tmp_path, tiny_model_dir):
    """Stage 00 records where its time goes (baseline, sentinels, batch-1 check) and shows it."""
    from cai_lib import models, views
    from cai_lib.config import RunConfig
    from cai_lib.runs import run_paths

    loaded = models.load_base(str(tiny_model_dir))
    cfg = RunConfig(model=str(tiny_model_dir), baseline_n_items=2, baseline_max_new_tokens=3, gen_batch_size=4,
                    determinism_sample=2, gen_cache="dynamic")
    summary = baseline.run_baseline(loaded, cfg, run_paths(tmp_path / "run"), progress=False)
    tim = summary["timing"]
    assert set(tim) == {"baseline_seconds", "sentinels_seconds", "determinism_seconds"}
    assert all(v >= 0 for v in tim.values()) and tim["baseline_seconds"] == summary["throughput"]["seconds"]
    text = views.decoding_table(summary).to_string()
    assert "sentinels" in text and "batch-1 check" in text and "tok/s" in text
