import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def tiny_tok():
    from tiny import tiny_tokenizer
    return tiny_tokenizer()


@pytest.fixture()
def tiny_lm(tiny_tok):
    from tiny import tiny_model
    return tiny_model(tiny_tok)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tiny import save_tiny
    return save_tiny(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture(autouse=True)
def _isolated_base_dir(tmp_path, monkeypatch):
    """Runs and caches go to a temp CAI_BASE_DIR unless a test says otherwise."""
    monkeypatch.setenv("CAI_BASE_DIR", str(tmp_path / "cai_base"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
