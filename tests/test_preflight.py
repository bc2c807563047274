"""Pre-flight arithmetic: shapes, the formula's parts, calibration points, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from cai_lib import preflight as pf
from cai_lib.config import RunConfig, load_profile
from cai_lib.errors import CaiError

# Published config.json values (Qwen2.5-32B, Qwen2.5-7B, Qwen2.5-1.5B; Gemma 3 270M = the embedded model).
QWEN32B = dict(model_type="qwen2", vocab_size=152064, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
               num_attention_heads=40, num_key_value_heads=8, tie_word_embeddings=False)
QWEN7B = dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
              num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)
QWEN1_5B = dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True)
GEMMA270M = dict(model_type="gemma3_text", vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                 num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512, tie_word_embeddings=True,
                 layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3)


def profile(name: str) -> dict:
    """A profile resolved the way `cai run` resolves it (its keys over RunConfig's defaults)."""
    return RunConfig.from_mapping(load_profile(name)).to_dict()


def test_shape_counts_match_the_published_32b():
    s = pf.shape_from_config(QWEN32B)
    assert (s.q, s.kv, s.head_dim) == (5120, 1024, 128)
    assert s.linear_params == 64 * (5120 * 5120 * 2 + 5120 * 1024 * 2 + 3 * 5120 * 27648)  # 31.21e9
    assert round(s.linear_params / 1e9, 2) == 31.21
    assert s.lora_params(32) == 64 * 32 * ((5120 + 5120) * 2 + 2 * (5120 + 1024) + 3 * (5120 + 27648))


def test_kv_cache_formula_and_sliding_window():
    s = pf.shape_from_config(QWEN32B)
    # 2 * layers * kv_heads * head_dim * 2 bytes * batch * tokens
    assert pf.kv_cache_bytes(s, 32, 256) == 2 * 64 * 8 * 128 * 2 * 32 * 256
    g = pf.shape_from_config(GEMMA270M)
    assert g.sliding_layers == 15
    # 15 windowed layers keep 512 positions, 3 global layers keep all 2048
    assert pf.kv_cache_bytes(g, 1, 2048) == 2 * 256 * 2 * (3 * 2048 + 15 * 512)


def test_32b_profile_estimates_and_fits_80gb():
    est = pf.estimate(QWEN32B, profile("gpu-32b"))
    w = est["00_baseline"]["parts"]["weights"]
    assert 18.5 < w < 19.1  # 31.21e9 * 0.546 B + 2 * 152064 * 5120 * 2 B = 18.8 GiB
    assert est["03_evaluate"]["parts"]["lora"] == pytest.approx(pf.shape_from_config(QWEN32B).lora_params(32) * 4 / 2**30)
    assert est["02_train"]["parts"]["lora_optimizer"] == pytest.approx(4.0, abs=0.05)  # 268 M params x 16 B
    # critique -> revision frames are the longest prompts: stage 01 is the largest generation stage;
    # stage 03's peak is its few-shot arm (response frames) with the adapter loaded
    assert est["01_generate"]["gib"] > est["03_evaluate"]["gib"] > est["00_baseline"]["gib"]
    assert est["03_evaluate"]["prompt_tokens"] == pf.FRAME_TOKENS["response"] + pf.INSTRUCTION_TOKENS
    findings = pf.check(QWEN32B, profile("gpu-32b"), 80)
    assert [f.stage for f in findings] == ["00_baseline", "01_generate", "02_train", "03_evaluate"]
    assert all(f.level == "ok" for f in findings), [str(f) for f in findings]
    assert est["total_hours"] > 0.5


def test_refuses_a_batch_too_big_for_80gb_and_names_the_key():
    cfg = {**profile("gpu-32b"), "gen_batch_size": 512}
    findings = {f.stage: f for f in pf.check(QWEN32B, cfg, 80)}
    f = findings["01_generate"]
    assert f.level == "refuse"
    line = str(f)
    assert "\n" not in line and "01_generate" in line and "gen_batch_size" in line
    assert 1 <= f.suggest < 512
    # the suggested batch really fits when fed back
    again = {x.stage: x for x in pf.check(QWEN32B, {**cfg, "gen_batch_size": f.suggest}, 80)}
    assert again["01_generate"].level in ("ok", "warn") and again["01_generate"].gib <= 0.95 * 80


def test_training_refusal_names_per_device_batch_size():
    cfg = {**profile("gpu-32b"), "per_device_batch_size": 256}
    f = {x.stage: x for x in pf.check(QWEN32B, cfg, 80)}["02_train"]
    assert f.level == "refuse" and f.key == "per_device_batch_size" and "per_device_batch_size" in str(f)


def test_weights_alone_too_big_says_quantize():
    cfg = {**profile("gpu-32b"), "quantization": "none"}  # 65 GB of bf16 weights + the rest on 40 GB
    f = pf.check(QWEN32B, cfg, 40)[0]
    assert f.level == "refuse" and f.suggest is None and "quantization: 4bit" in str(f)


def test_gradient_checkpointing_off_costs_memory():
    on = pf.estimate(QWEN32B, profile("gpu-32b"))["02_train"]["parts"]["activations"]
    off = pf.estimate(QWEN32B, {**profile("gpu-32b"), "gradient_checkpointing": False})["02_train"]["parts"]["activations"]
    assert off > 10 * on


def test_embedded_model_gpu_small_estimates():
    est = pf.estimate(GEMMA270M, profile("gpu-small"))
    # gpu-small decodes bf16 weights (gen_quantization: none): 268 M parameters x 2 bytes
    assert 0.45 < est["03_evaluate"]["parts"]["weights"] < 0.55
    # with 4-bit generation weights: 168 M bf16 embedding + 100 M nf4 linear
    est4 = pf.estimate(GEMMA270M, {**profile("gpu-small"), "quantization": "4bit", "gen_quantization": "as_train"})
    assert 0.3 < est4["03_evaluate"]["parts"]["weights"] < 0.4
    assert all(f.level == "ok" for f in pf.check(GEMMA270M, profile("gpu-small"), 80))


# Measured peaks (reports/benchmarks.md, H100): the formula must stay within 15% of each.
CALIBRATION = [
    # DPO step, Unsloth 4-bit, 4 pairs x 384 tokens, r=16, checkpointing
    ("qwen7b dpo", QWEN7B, dict(quantization="4bit", per_device_batch_size=4, lora_r=16, gradient_checkpointing=True),
     "02_train", 384, 7.04),
    ("qwen1.5b dpo", QWEN1_5B, dict(quantization="4bit", per_device_batch_size=4, lora_r=16, gradient_checkpointing=True),
     "02_train", 384, 1.97),
    # cai run --profile gpu-small, stages 02 (no checkpointing) and 03 (embedded Gemma 3 270M)
    ("gemma gpu-small 02", GEMMA270M, "GPU_SMALL_RUN", "02_train", None, 2.05),
    ("gemma gpu-small 03", GEMMA270M, "GPU_SMALL_RUN", "03_evaluate", None, 0.66),
]
# The settings of that gpu-small run (reports/gpu-small-h100/manifest.json), pinned here so a
# later profile change does not move the calibration point.
GPU_SMALL_RUN = dict(quantization="4bit", per_device_batch_size=8, gradient_accumulation_steps=1, lora_r=16,
                     data_max_new_tokens=64, max_length=256, max_prompt_length=128, gradient_checkpointing=False,
                     gen_batch_size=64, eval_max_new_tokens=64, backend="auto", precompute_ref_log_probs=True)


@pytest.mark.parametrize("name,config,cfg,stage,seq,measured", CALIBRATION, ids=[c[0] for c in CALIBRATION])
def test_within_15_percent_of_measured_peaks(name, config, cfg, stage, seq, measured):
    cfg = GPU_SMALL_RUN if cfg == "GPU_SMALL_RUN" else cfg
    if stage == "03_evaluate":
        # that run (2026-11-25) evaluated two arms on raw instructions; the few-shot arm came later
        parts = pf.generation_bytes(pf.shape_from_config(config), pf.generation_cfg(pf._with_defaults(cfg)),
                                    batch=cfg["gen_batch_size"], prompt=pf.INSTRUCTION_TOKENS,
                                    new=cfg["eval_max_new_tokens"], with_lora=True)
        est = sum(parts.values()) / 2**30
    else:
        est = pf.estimate(config, cfg, seq_tokens=seq, training_backend="unsloth")[stage]["gib"]
    assert abs(est / measured - 1) <= 0.15, (name, est, measured)


REHEARSAL = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "rehearse_32b_h200" / "rehearse_32b_merged.json"


def test_32b_rehearsal_peaks_within_15_percent():
    """The H200 rehearsal at Qwen2.5-32B shape under an 80 GB cap (2026-12-03): the formula, as
    it is now, against every measured peak; the batch that ran out of memory must be refused."""
    import json

    res = json.loads(REHEARSAL.read_text())
    assert res["device"]["cap_gib"] == 80.0
    s = pf.shape_from_config(QWEN32B)
    cfg = pf._with_defaults(profile("gpu-32b"))
    g = pf.generation_cfg(cfg)
    assert res["gen"]["load"]["peak_alloc_gib"] == pytest.approx(pf.weights_bytes(s, g) / 2**30, rel=0.15)
    searches = [(res["gen"]["oom_01_revision"], res["gen"]["01_revision"], cfg["data_max_new_tokens"], False),
                (res["eval"]["oom_03_evaluate"], res["eval"]["03_evaluate"], cfg["eval_max_new_tokens"], True)]
    checked = 0
    for search, sample, new, lora in searches:
        for t in search["tried"]:
            est = sum(pf.generation_bytes(s, g, batch=t["batch"], prompt=sample["prompt_tokens_max"], new=new,
                                          with_lora=lora).values()) / 2**30
            if t["cuda_ooms"]:  # the measured figure is where the allocator gave up, not a peak
                assert est > 80 * pf.USABLE, (t, est)
            else:
                assert abs(est / t["peak_alloc_gib"] - 1) <= 0.15, (t, est)
                checked += 1
    assert checked >= 7
    for backend, measured in (("unsloth", 22.124), ("transformers", 25.355)):
        key = "unsloth" if backend == "unsloth" else "transformers+bnb4"
        assert res["dpo_by_backend"][key]["02_train"]["peak_alloc_gib"] == measured
        est = pf.estimate(QWEN32B, {**profile("gpu-32b"), "gen_batch_size": 32}, training_backend=backend)["02_train"]["gib"]
        assert abs(est / measured - 1) <= 0.15, (backend, est, measured)


def test_8bit_eval_toggle_within_15_percent():
    # 7B LLM.int8, adapter r=32 toggled, batch 16, prompts up to 120 tokens, 64 new: 9.23 GiB measured
    s = pf.shape_from_config(QWEN7B)
    parts = pf.generation_bytes(s, dict(quantization="8bit", lora_r=32), batch=16, prompt=120, new=64, with_lora=True)
    assert abs(sum(parts.values()) / 2**30 / 9.23 - 1) <= 0.15


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(CaiError, match="hidden_size"):
        pf.check({k: v for k, v in QWEN32B.items() if k != "hidden_size"}, profile("gpu-32b"), 80)
    with pytest.raises(CaiError, match="gpu memory"):
        pf.check(QWEN32B, profile("gpu-32b"), 0)
    nested = {"model_type": "gemma3", "text_config": GEMMA270M}
    assert pf.estimate(nested, profile("gpu-small"))["02_train"]["gib"] == pf.estimate(GEMMA270M, profile("gpu-small"))["02_train"]["gib"]


def test_generation_uses_gen_quantization_and_static_cache():
    y = profile("gpu-32b")
    four = pf.estimate(QWEN32B, y)["01_generate"]
    bf16 = pf.estimate(QWEN32B, {**y, "gen_quantization": "none"})["01_generate"]
    assert four["quantization"] == "4bit" and not four["static_cache"]
    assert bf16["quantization"] == "none" and bf16["static_cache"]  # auto + unquantized -> static
    assert bf16["parts"]["weights"] > 3 * four["parts"]["weights"]
    # the static cache holds a power-of-two length: >= the dynamic cache of the same batch
    assert bf16["parts"]["kv_cache"] >= four["parts"]["kv_cache"]
    assert pf.static_cache_tokens(660) == 1024 and pf.static_cache_tokens(5) == 512
    from cai_lib import generate
    assert pf.MIN_STATIC_CACHE == generate.MIN_CACHE_LEN  # the estimate plans what generate allocates
    # training is unaffected by the generation setting
    assert pf.estimate(QWEN32B, {**y, "gen_quantization": "none"})["02_train"]["gib"] == pytest.approx(
        pf.estimate(QWEN32B, y)["02_train"]["gib"])


def test_partial_profile_takes_runconfig_defaults():
    # a profile file states only what differs; the estimate must equal that of the resolved config
    raw = load_profile("gpu-32b")
    assert "per_device_batch_size" not in raw or raw["per_device_batch_size"] == RunConfig().per_device_batch_size
    assert pf.estimate(QWEN32B, raw)["02_train"]["gib"] == pf.estimate(QWEN32B, profile("gpu-32b"))["02_train"]["gib"]
    with pytest.raises(CaiError, match="cfg_values"):
        pf.estimate(QWEN32B, ["not", "a", "mapping"])


def test_time_arithmetic_for_evaluation_and_training():
    y = profile("gpu-32b")
    s = pf.shape_from_config(QWEN32B)
    g = pf.generation_cfg(y)
    est = pf.estimate(QWEN32B, y)
    # 03: base raw + base few-shot + trained = 3 x ceil(300/b) batches (charged at the few-shot frame's
    # length), + the determinism check: 1 batch and 32 batch-1 rows
    b = y["gen_batch_size"]
    prompt = pf.FRAME_TOKENS["response"] + pf.INSTRUCTION_TOKENS
    per_b = pf._batch_s(s, g, b, prompt, 128)
    per1 = pf._batch_s(s, g, 1, prompt, 128)
    e03 = est["03_evaluate"]
    assert e03["work_s"] == pytest.approx((3 * -(-300 // b) + 1) * per_b + 32 * per1)
    # + the stage process and reading the nf4 weights once; bitsandbytes decoding compiles nothing
    assert e03["overhead_s"] == pytest.approx(pf.STAGE_PROCESS_S + pf.weights_bytes(s, g) / pf.LOAD_BW)
    assert e03["compile_s"] == 0 and e03["seconds"] == pytest.approx(e03["work_s"] + e03["overhead_s"])
    # a 4-bit decoding step is launch-bound: 64 layers x 5.6 ms dominate
    assert 0.3 < pf.decode_step_s(s, g, 32) < 0.45
    # 02: ceil(1000 / (4 x 4)) x 2 epochs optimizer steps of 4 micro-batches
    t = est["02_train"]
    assert t["optimizer_steps"] == 126 and t["step_s"] == pytest.approx(4 * t["micro_step_s"])
    assert t["seconds"] == pytest.approx(126 * t["step_s"] + t["reference_s"] + pf.UNSLOTH_COMPILE_S + t["overhead_s"])


def test_gpu_small_estimate_bounds_the_h200_run():
    """Each stage's estimate is above what the gpu-small run on the H200 took with torch's compile
    caches cold (2026-12-04, reports/gpu-small-h200/manifest.json), and not absurdly so: the fixed costs (process, load,
    compilation, overhead-bound steps) are what a 270M run is made of."""
    import json
    manifest = json.loads((Path(__file__).resolve().parent.parent / "reports" / "gpu-small-h200" /
                           "manifest.json").read_text())
    measured = {k: manifest["stages"][k[:2]]["seconds"] for k in ("00_baseline", "01_generate", "02_train", "03_evaluate")}
    est = pf.estimate(GEMMA270M, {**profile("gpu-small"), **{k: manifest["config"][k] for k in (
        "quantization", "gen_quantization", "gen_cache", "backend", "pair_strategy", "pair_sc_k",
        "per_device_batch_size")}})
    for stage, secs in measured.items():
        assert secs <= est[stage]["seconds"] <= 3 * secs, (stage, secs, est[stage]["seconds"])
    total = sum(measured.values())
    assert total <= est["total_hours"] * 3600 <= 2 * total
    assert est["03_evaluate"]["compile_s"] == sum(pf.COMPILE_SHAPE_S)  # the adapter merged: one graph
    unmerged = pf.estimate(GEMMA270M, {**profile("gpu-small"), "eval_adapter": "unmerged"})
    assert unmerged["03_evaluate"]["compile_s"] == 2 * sum(pf.COMPILE_SHAPE_S)  # adapter off and on


def test_read_model_config_and_summary_lines(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps(QWEN32B))
    assert pf.read_model_config(tmp_path) == QWEN32B
    lines = pf.summary_lines(pf.read_model_config(tmp_path), profile("gpu-32b"), 80)
    assert len(lines) == 5 and lines[-1].startswith("whole run: ~") and all("\n" not in x for x in lines)
    with pytest.raises(CaiError, match="config.json: not found"):
        pf.read_model_config(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(CaiError, match="cannot be read as JSON"):
        pf.read_model_config(tmp_path)


def test_cai_run_preflight_refuses_a_stage_that_will_not_fit_before_writing_anything(tmp_path, capsys):
    """`cai run --preflight` on a CPU machine with --gpu-gib: the 32B shape from its config.json."""
    import json as _json

    from cai_lib.cli import main
    from cai_lib.runs import runs_root
    folder = tmp_path / "qwen32b"
    folder.mkdir()
    (folder / "config.json").write_text(_json.dumps({
        "model_type": "qwen2", "hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64,
        "num_attention_heads": 40, "num_key_value_heads": 8, "vocab_size": 152064, "tie_word_embeddings": False}))
    assert main(["run", "--profile", "gpu-32b", "--set", f"model={folder}", "--preflight", "--gpu-gib", "80"]) == 0
    out = capsys.readouterr().out
    assert "01_generate: OK" in out and "whole run" in out
    code = main(["run", "--profile", "gpu-32b", "--set", f"model={folder}", "--set", "gen_batch_size=512",
                 "--run-id", "pf", "--gpu-gib", "80"])
    err = capsys.readouterr().err
    assert code == 1 and "01_generate: REFUSE" in err and "gen_batch_size" in err and len(err.strip().splitlines()) == 1
    assert not (runs_root() / "pf").exists()
    code = main(["run", "--profile", "cpu-quick", "--preflight"])  # no GPU here and no --gpu-gib
    assert code == 1 and "--gpu-gib" in capsys.readouterr().err


def test_self_consistency_plans_k_sampled_passes_of_the_response_frame():
    cfg = pf._with_defaults({**profile("gpu-small"), "pair_strategy": "self_consistency", "pair_sc_k": 5})
    plan = {p["stage"]: p for p in pf._stage_plan(cfg)}["01_generate"]
    assert plan["passes"] == 2 + 5  # greedy response, raw continuation, and k sampled responses
    assert plan["prompt"] == pf.FRAME_TOKENS["response"] + pf.INSTRUCTION_TOKENS
    fd = {p["stage"]: p for p in pf._stage_plan({**cfg, "pair_strategy": "format_distillation"})}["01_generate"]
    assert fd["passes"] == 2


def test_durations_read_at_every_scale():
    # a 270M run's stages take seconds: "~0 min" told the reader nothing
    assert [pf.duration(x) for x in (4.4, 119, 120, 3000, 7200, 13000)] == \
        ["4 s", "119 s", "2 min", "50 min", "2.0 h", "3.6 h"]
