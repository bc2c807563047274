import pytest

from cai_lib import config
from cai_lib.config import RunConfig
from cai_lib.errors import CaiError


def test_resolve_takes_run_config_then_notebook_params(tmp_path):
    (tmp_path / "config.json").write_text('{"beta": 0.5, "seed": 3}')
    cfg = config.resolve(tmp_path, {"seed": 9, "not_a_field": 1})
    assert cfg.beta == 0.5 and cfg.seed == 9


def test_unsloth_compile_setting_reaches_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("UNSLOTH_COMPILE_DISABLE", raising=False)
    config.resolve(tmp_path, {"unsloth_compile": False})
    import os
    assert os.environ["UNSLOTH_COMPILE_DISABLE"] == "1"
    monkeypatch.delenv("UNSLOTH_COMPILE_DISABLE")
    config.resolve(tmp_path, {"unsloth_compile": True})
    assert os.environ["UNSLOTH_COMPILE_DISABLE"] == "0"


def test_bad_values_are_one_line_errors():
    with pytest.raises(CaiError, match="loss_weights"):
        RunConfig.from_mapping({"loss_type": ["sigmoid"], "loss_weights": [1.0, 1.0]})
    with pytest.raises(CaiError, match="pair_strategy"):
        RunConfig.from_mapping({"pair_strategy": "magic"})


# ---- the typed config: every wrong value is one line naming the key, before anything loads ----

BAD_VALUES = [
    ("trust_remote_code", '"false"', "drop the quotes"),
    ("allow_instruct_model", '"false"', "drop the quotes"),
    ("dry_run", "'false'", "drop the quotes"),
    ("precompute_ref_log_probs", "1", "not a boolean"),
    ("num_epochs", "0", "num_epochs"),
    ("max_steps", "0", "untrained adapter"),
    ("max_steps", "-2", "max_steps"),
    ("n_eval_items", "-5", "n_eval_items"),
    ("n_train_items", "-1", "n_train_items"),
    ("learning_rate", "abc", "not a number"),
    ("learning_rate", "0", "learning_rate"),
    ("learning_rate", ".nan", "finite"),
    ("gen_batch_size", "0", "gen_batch_size"),
    ("per_device_batch_size", "-4", "per_device_batch_size"),
    ("gradient_accumulation_steps", "0", "gradient_accumulation_steps"),
    ("lora_r", "2.5", "whole number"),
    ("lora_dropout", "1.0", "lora_dropout"),
    ("warmup_ratio", "1.5", "warmup_ratio"),
    ("beta", "-0.1", "beta"),
    ("gate_target", "0", "gate_target"),
    ("gate_alpha", "1", "gate_alpha"),
    ("quantization", "3bit", "not one of"),
    ("pair_strategy", "magic", "not one of"),
    ("gen_cache", "fast", "not one of"),
    ("loss_type", "sigmoid", "must be a list"),
    ("loss_type", "[sigmod]", "not one of"),
    ("baseline_formats", "[raw, chat]", "not one of"),
    ("lora_target_modules", "[]", "empty list"),
    ("model", '""', "empty"),
    ("seed", "true", "boolean"),
    ("save_steps", "ten", "whole number"),
    ("eval_max_new_tokens", "null", "null"),
    ("max_prompt_length", "300", "below max_length"),
    ("n_bootstrap", "10", "n_bootstrap"),
    ("seed", "1" + "0" * 5000, "cannot be read"),
]


@pytest.mark.parametrize("key,value,needle", BAD_VALUES, ids=[f"{k}={v[:12]}" for k, v, _ in BAD_VALUES])
def test_every_bad_profile_value_is_refused_in_one_line(tmp_path, key, value, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(f"{key}: {value}\n")
    with pytest.raises(CaiError) as e:
        config.load_profile(str(p))
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and key in msg and str(p) in msg and needle in msg, msg
    assert len(msg) < 400


def test_merged_adapter_on_quantized_generation_weights_is_refused_before_any_model_loads(tmp_path):
    """eval_adapter: merged with 4-bit generation weights (as_train takes training's 4-bit) is a
    one-line refusal when the profile is read, not after stage 03 loaded the model."""
    p = tmp_path / "bad.yaml"
    p.write_text("quantization: 4bit\neval_adapter: merged\n")
    with pytest.raises(CaiError) as e:
        config.load_profile(str(p))
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and "eval_adapter" in msg and "gen_quantization: none" in msg, msg
    RunConfig.from_mapping({"quantization": "4bit", "gen_quantization": "none", "eval_adapter": "merged"})  # fine


def test_yaml_string_forms_of_numbers_are_read_when_unambiguous(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("learning_rate: 1e-4\nbeta: '0.25'\nnum_epochs: 1\nmax_length: 512\n")  # YAML reads 1e-4 as a string
    cfg = RunConfig.from_mapping(config.load_profile(str(p)))
    assert cfg.learning_rate == 1e-4 and cfg.beta == 0.25 and isinstance(cfg.num_epochs, float)


def test_defaults_validate_and_direct_construction_is_checked_too():
    RunConfig()
    with pytest.raises(CaiError, match="trust_remote_code"):
        RunConfig(trust_remote_code="false")


def test_a_bad_profile_is_refused_before_anything_heavy_is_imported(tmp_path):
    """`cai run` on a bad profile answers before torch, transformers or papermill load (the
    import cost is what made a refusal take seconds); measured time is in the closing note."""
    import subprocess
    import sys
    bad = tmp_path / "bad.yaml"
    bad.write_text('trust_remote_code: "false"\n')
    code = ("import sys\nfrom cai_lib.cli import main\n"
            f"assert main(['run', '--profile', {str(bad)!r}]) == 1\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'papermill')]\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "drop the quotes" in r.stderr


def test_non_utf8_and_non_mapping_profiles(tmp_path):
    p = tmp_path / "latin.yaml"
    p.write_bytes("model: caf\xe9\n".encode("latin-1"))
    with pytest.raises(CaiError, match="not UTF-8"):
        config.load_profile(str(p))
    p.write_text("- a\n- b\n")
    with pytest.raises(CaiError, match="mapping"):
        config.load_profile(str(p))
    p.write_text("lerning_rate: 0.1\n")
    with pytest.raises(CaiError, match="did you mean 'learning_rate'"):
        config.load_profile(str(p))


def test_set_overrides_are_validated_like_profile_values():
    assert config.parse_overrides(["learning_rate=2e-4", "loss_type=[sigmoid]"]) == \
        {"learning_rate": "2e-4", "loss_type": ["sigmoid"]}
    with pytest.raises(CaiError, match="drop the quotes"):
        config.parse_overrides(["dry_run='false'"])
    with pytest.raises(CaiError, match="key=value"):
        config.parse_overrides(["dry_run"])


def test_notebook_takes_the_run_config_exactly_and_prints_overrides(tmp_path, capsys):
    """A notebook opened on a finished run: its None parameters change nothing."""
    from cai_lib.jsonl import write_json
    write_json(tmp_path / "config.json", RunConfig(gate_target=0.4, eval_max_new_tokens=64).to_dict())
    params = {name: None for name in RunConfig.field_names()}
    cfg = config.resolve(tmp_path, params)
    assert cfg.gate_target == 0.4 and cfg.eval_max_new_tokens == 64
    assert "override" not in capsys.readouterr().out
    cfg = config.resolve(tmp_path, {**params, "gate_target": 0.5})
    assert cfg.gate_target == 0.5
    assert "override: gate_target = 0.5 (the run's config.json has 0.4)" in capsys.readouterr().out
    with pytest.raises(CaiError, match="drop the quotes"):
        config.resolve(tmp_path, {"dry_run": "false"})


def test_a_notebook_starting_a_new_run_records_its_config(tmp_path):
    run = tmp_path / "new"
    run.mkdir()
    config.resolve(run, {"seed": 4})
    assert RunConfig.from_mapping(__import__("json").loads((run / "config.json").read_text())).seed == 4
