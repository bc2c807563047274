"""The 32B-shape builder (tiny shape, no 4-bit step) and the rehearsal, end to end on CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import build_shape_checkpoint as bsc  # noqa: E402
import rehearse  # noqa: E402

TINY_RUN = ["quantization=none", "backend=transformers", "gen_batch_size=2", "data_max_new_tokens=4",
            "eval_max_new_tokens=4", "baseline_max_new_tokens=4", "per_device_batch_size=1",
            "gradient_accumulation_steps=2", "determinism_sample=2"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shape") / "tiny"
    rec = bsc.build("tiny", out, quantize=False, device="cpu")
    assert rec["quantized"] is None and rec["tokenizer"]["bos"] is None
    return out


def test_tokenizer_is_qwen_like():
    tok = bsc.qwen_like_tokenizer(4096)
    assert len(tok) == 4096
    assert tok.bos_token is None and tok.bos_token_id is None
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    ids = tok("Name the capital of France in one word.", add_special_tokens=False)["input_ids"]
    assert 6 <= len(ids) <= 12  # ~1 token per word: trained on the package's own texts
    assert tok(" w17", add_special_tokens=False)["input_ids"] != []  # fillers decode and re-encode to text
    assert tok.decode([4000]).startswith(" w")  # a filler id a random model may generate
    assert tok("x", add_special_tokens=True)["input_ids"] == tok("x", add_special_tokens=False)["input_ids"]


def test_built_folder_loads_through_the_package_with_bos_policy_none(tiny_dir):
    from cai_lib import guard
    from cai_lib.models import load_base

    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["tie_word_embeddings"] is False
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (5, 1)
    loaded = load_base(str(tiny_dir), dtype="float32")
    tok = loaded.tokenizer
    assert loaded.info["bos_policy"] == "none"
    assert guard.bos_policy(tok)["bos_token_id"] is None
    # AutoTokenizer picks the qwen2 tokenizer class for this folder; it must encode as the builder's
    built = bsc.qwen_like_tokenizer(cfg["vocab_size"])
    text = "Instruction: List three colors.\nResponse: red, green and blue."
    assert guard.encode_prompts(tok, [text])[0] == built(text, add_special_tokens=False)["input_ids"]
    assert tok.pad_token_id == tok.eos_token_id == cfg["eos_token_id"]
    # Qwen's config names <|endoftext|> as bos_token_id too; the guard must still add no BOS
    assert cfg["bos_token_id"] == cfg["eos_token_id"]
    with pytest.raises(Exception, match="endoftext"):  # refused as a chat marker / special token
        guard.encode_prompts(tok, ["hello <|endoftext|> world"])


def test_dpo_pair_ends_in_eos_without_bos(tiny_dir):
    from cai_lib.models import load_base
    from cai_lib.pair_tokens import encode_pair

    loaded = load_base(str(tiny_dir), dtype="float32")
    enc = encode_pair(loaded.tokenizer, {"prompt": "Name a color.", "chosen": "Blue.", "rejected": "Cats."},
                      leading_space=False)
    eos = loaded.tokenizer.eos_token_id
    assert enc["chosen_ids"][-1] == eos and enc["rejected_ids"][-1] == eos
    assert eos not in enc["prompt_ids"]


def test_rehearsal_runs_every_stage_on_cpu(tiny_dir, tmp_path):
    out = tmp_path / "r.json"
    argv = ["--model", str(tiny_dir), "--json", str(out), "--dpo-steps", "2", "--batch1-items", "1",
            "--oom-search", "--oom-max-batch", "4", "--oom-max-train-batch", "1", "--set", *TINY_RUN]
    assert rehearse.main(argv) == 0
    res = json.loads(out.read_text())
    gen, dpo, ev = res["gen"], res["dpo"], res["eval"]
    assert gen["load"]["bos_policy"] == "none"
    for k in ("00_baseline", "01_response", "01_critique", "01_revision"):
        assert gen[k]["n"] == 2 and gen[k]["new_tokens"] == 2 * 4 and gen[k]["s_per_batch"] > 0
    # the revision frame carries the answer and the critique: the longest prompts of the run
    assert gen["01_revision"]["prompt_tokens_max"] > gen["01_critique"]["prompt_tokens_max"] > gen["01_response"]["prompt_tokens_max"]
    assert gen["oom_01_revision"]["oom_batch"] is None and [t["batch"] for t in gen["oom_01_revision"]["tried"]] == [2, 4]
    d = dpo["02_train"]
    assert d["steps"] == 2 and len(d["step_s"]) == 2 and d["pairs"]["used"] == 4
    assert dpo["oom_02_train"]["largest_ok"] == 1
    assert (tmp_path / "r-run" / "adapter" / "adapter_config.json").is_file()
    e = ev["03_evaluate"]
    assert e["n"] == 2 and e["base_new_tokens"] == e["trained_new_tokens"] == 8
    x = res["extrapolated"]
    for k in ("00_baseline_s", "01_generate_s", "02_train_s", "03_evaluate_s"):
        assert x[k] > 0
    assert x["02_optimizer_steps"] == 1000 // 2 * 2  # gpu-32b: 1000 items / (1 x 2) x 2 epochs
    assert set(res["preflight"]) >= {"00_baseline", "01_generate", "02_train", "03_evaluate"}
    assert res["table"].count("\n") == 7  # header, rule, 6 stage rows


def test_extrapolation_arithmetic():
    cfg = rehearse.make_config("gpu-32b", "unused", {"gen_batch_size": 32})
    res = {"gen": {"00_baseline": {"s_per_batch": 10.0, "n_prompts_full": 582},
                   "01_response": {"s_per_batch": 20.0}, "01_critique": {"s_per_batch": 30.0},
                   "01_revision": {"s_per_batch": 40.0}, "batch1": {"s_per_item": 5.0}},
           "dpo": {"02_train": {"steady_step_s": 4.0, "first_step_s": 60.0, "setup_s": 32.0, "steps": 2}},
           "eval": {"03_evaluate": {"s_per_batch": 8.0}, "batch1": {"s_per_item": 6.0}}}
    x = rehearse.extrapolate(cfg, res)
    # 00: ceil(582/32)=19 batches + determinism ceil(32/32)=1 batch at 10 s + 32 batch-1 items at 5 s
    assert x["00_baseline_s"] == 19 * 10 + 10 + 32 * 5
    # 01: critique_revision, ceil(1000/32)=32 batches per step
    assert x["01_generate_s"] == 32 * (20 + 30 + 40)
    # 02: ceil(1000/16)=63 steps x 2 epochs; first step extra; the sample's setup once; reference
    # log-probs for the pairs beyond the sample's 2x16 at a third of a step's per-pair time
    assert x["02_optimizer_steps"] == 126
    assert x["02_train_s"] == pytest.approx(126 * 4 + 56 + 32 + (1000 - 32) * (4 / 16) / 3)
    # 03: two raw arms x ceil(300/32)=10 batches, the few-shot arm's 10 batches at 01_response's
    # time (not measured in stage 03 here), + determinism 1 batch + 32 batch-1 items
    assert x["03_evaluate_s"] == 2 * 10 * 8 + 10 * 20 + 8 + 32 * 6
    assert x["03_fewshot_arm_from"] == "01_response"
    res["eval"]["03_evaluate"]["fewshot_s_per_batch"] = 12.0
    assert rehearse.extrapolate(cfg, res)["03_evaluate_s"] == 2 * 10 * 8 + 10 * 12 + 8 + 32 * 6
    assert x["total_hours"] == pytest.approx(sum(v for k, v in x.items() if k.endswith("_s")) / 3600, abs=1e-3)


def test_bad_stage_name_is_one_line():
    with pytest.raises(SystemExit, match="--stages: unknown 'train'"):
        rehearse.main(["--model", "x", "--stages", "gen,train"])


def _bnb_importable() -> bool:
    try:
        import bitsandbytes  # noqa: F401
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.skipif(not _bnb_importable(), reason="bitsandbytes not installed (the gpu extra)")
def test_4bit_checkpoint_loads_as_prequantized_nf4(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    out = tmp_path / "tiny4"
    rec = bsc.build("tiny", out, quantize=True, device="cuda" if cuda else "cpu", allow_cpu_4bit=not cuda)
    assert rec["quantized"] == "nf4" and rec["linear_4bit"] == 2 * 7
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["bnb_4bit_quant_type"] == "nf4" and qc["bnb_4bit_use_double_quant"] is True
    model = AutoModelForCausalLM.from_pretrained(str(out), device_map={"": 0 if cuda else "cpu"})
    lin = model.model.layers[0].mlp.down_proj
    assert type(lin).__name__ == "Linear4bit" and type(model.lm_head).__name__ == "Linear"
    import bitsandbytes.functional as F
    w = F.dequantize_4bit(lin.weight.data, lin.weight.quant_state).float()
    assert abs(w.std().item() - bsc.INIT_STD) < 0.003  # the drawn weights survived quantize -> save -> load


@pytest.mark.skipif(_bnb_importable(), reason="checks the message seen without bitsandbytes")
def test_prequantized_folder_without_bitsandbytes_is_one_line(tiny_dir, tmp_path):
    import shutil

    from cai_lib.errors import CaiError
    from cai_lib.models import load_base

    folder = tmp_path / "prequantized"
    shutil.copytree(tiny_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CaiError, match="quantiz"):
        load_base(str(folder), dtype="float32")


def test_32b_shape_on_meta_matches_the_preflight_counts():
    """The builder's 32B config, instantiated without memory, has the parameters preflight counts."""
    import torch
    from transformers import AutoModelForCausalLM

    from cai_lib import preflight

    spec = bsc.shape_spec("qwen32b")
    cfg = bsc.make_config(spec, eos_id=spec["vocab_size"] - 3)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and n != "lm_head")
    shape = preflight.shape_from_config(cfg.to_dict())
    assert linear == shape.linear_params == 31_205_621_760  # 64 x (2 x 5120 x 5120 + 2 x 5120 x 1024 + 3 x 5120 x 27648)
    assert model.lm_head.weight.shape == (152064, 5120) and not cfg.tie_word_embeddings
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.num_hidden_layers) == (40, 8, 64)
    assert cfg.bos_token_id == cfg.eos_token_id  # as Qwen2.5's config.json


def test_generation_subset_saves_as_it_goes(tiny_dir, tmp_path):
    out = tmp_path / "g.json"
    argv = ["--model", str(tiny_dir), "--json", str(out), "--stages", "gen", "--gen-kinds", "revision",
            "--batch1-items", "0", "--set", *TINY_RUN]
    assert rehearse.main(argv) == 0
    res = json.loads(out.read_text())
    assert set(res["gen"]) == {"load", "01_revision"}
    x = res["extrapolated"]
    assert "00_baseline_s" not in x and x["01_generate_missing_steps"] == ["response", "critique"]
    assert x["01_generate_s"] == 500 * res["gen"]["01_revision"]["s_per_batch"]  # ceil(1000 / 2) batches
    with pytest.raises(SystemExit, match="--gen-kinds: unknown 'revise'"):
        rehearse.main(["--model", str(tiny_dir), "--json", str(out), "--stages", "gen", "--gen-kinds", "revise",
                       "--set", *TINY_RUN])


@pytest.mark.skipif(not _bnb_importable(), reason="bitsandbytes not installed (the gpu extra)")
def test_prequantized_folder_reports_its_real_quantization(tmp_path):
    import torch

    from cai_lib.models import load_base

    cuda = torch.cuda.is_available()
    out = tmp_path / "tiny4"
    bsc.build("tiny", out, quantize=True, device="cuda" if cuda else "cpu", allow_cpu_4bit=not cuda)
    loaded = load_base(str(out), dtype="bfloat16")  # quantization defaults to "none"
    assert type(loaded.model.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"  # what was loaded
    assert loaded.info["quantization"] == "4bit"  # what the manifest should record


def test_preflight_vs_measured_ratio():
    res = {"preflight": {"01_generate": {"gib": 30.0}, "02_train": {"gib": 24.0}},
           "gen": {"01_response": {"peak_alloc_gib": 20.0}, "01_revision": {"peak_alloc_gib": 27.0}},
           "dpo": {"02_train": {"peak_alloc_gib": None}}}
    out = rehearse.preflight_vs_measured(res)
    assert out == {"01_generate": {"preflight_gib": 30.0, "measured_gib": 27.0, "ratio": round(30 / 27, 3)}}


def test_merge_extrapolates_per_backend_and_at_other_batches(tmp_path):
    """--merge of the committed H200 call JSONs: one record, a DPO row per backend, and the
    batch-128 extrapolation charged from the OOM searches' timed tries."""
    src = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "rehearse_32b_h200"
    parts = [src / n for n in ("rehearse_oom_gen.json", "rehearse_dpo.json", "rehearse_dpo_bnb.json",
                               "rehearse_oom_eval.json")]
    out = tmp_path / "merged.json"
    assert rehearse.main(["--merge", *map(str, parts), "--at-batch", "128", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["dpo_by_backend"]) == {"unsloth", "transformers+bnb4"}
    assert res["table"].count("| 02 DPO") == 2
    at = res["extrapolated"]["unsloth"]["batch_128"]
    rev128 = next(t["seconds"] for t in res["gen"]["oom_01_revision"]["tried"] if t["batch"] == 128)
    assert at["01_generate_s"] == pytest.approx(3 * -(-1000 // 128) * rev128)  # 3 steps x 8 batches
    assert at["total_hours"] < res["extrapolated"]["unsloth"]["sample_batch"]["total_hours"]
    # batch 256 ran out of memory in the revision search: no extrapolation there
    assert rehearse.extrapolate_at_batch(rehearse.make_config("gpu-32b", "x", {}), res, 256) is None


def test_merge_of_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"--merge .*nope\.json: not a readable rehearsal JSON"):
        rehearse.main(["--merge", str(tmp_path / "nope.json"), "--json", str(tmp_path / "m.json")])
    assert not (tmp_path / "m.json").exists()
