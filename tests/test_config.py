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
