"""Adapter loading goes through PEFT and refuses folders that are not adapters.

The end-to-end "reload reproduces the trained logits" check lives in test_train.py
(it needs a trained adapter); these tests build adapters directly with PEFT.
"""

from __future__ import annotations

import json

import pytest
import torch

from cai_lib import adapters
from cai_lib.errors import CaiError

torch.set_num_threads(1)


def make_adapter(model, path, seed=0):
    """A LoRA adapter with non-zero B (a fresh one is the identity), saved with metadata."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    pm.save_pretrained(str(path))
    return pm


def logits(model, ids=(2, 10, 20, 30, 40)):
    with torch.no_grad():
        return model(input_ids=torch.tensor([list(ids)])).logits


class Loaded:
    def __init__(self, model, path):
        self.model, self.spec, self.resolved_path, self.info = model, "tiny", str(path), {}


def test_load_adapter_applies_and_toggles(tiny_tok, tmp_path):
    from tiny import tiny_model

    trained = make_adapter(tiny_model(tiny_tok), tmp_path / "ad")
    want = logits(trained)
    base = tiny_model(tiny_tok)
    base_logits = logits(base)
    pm = adapters.load_adapter(base, tmp_path / "ad")
    assert torch.allclose(logits(pm), want, atol=1e-6)
    assert not torch.allclose(want, base_logits, atol=1e-3)
    with adapters.adapter_disabled(pm):
        assert torch.allclose(logits(pm), base_logits, atol=1e-6)
    assert torch.allclose(logits(pm), want, atol=1e-6)  # back on after the block
    merged = adapters.load_adapter(tiny_model(tiny_tok), tmp_path / "ad", merge=True)
    assert torch.allclose(logits(merged), want, atol=1e-5)
    with pytest.raises(CaiError, match="LoRA adapter attached"):
        with adapters.adapter_disabled(merged):
            pass


def test_not_an_adapter_folder(tiny_tok, tmp_path, tiny_model_dir):
    from tiny import tiny_model

    with pytest.raises(CaiError, match="adapter folder not found"):
        adapters.load_adapter(tiny_model(tiny_tok), tmp_path / "missing")
    with pytest.raises(CaiError, match="full model folder, not a LoRA adapter"):
        adapters.load_adapter(tiny_model(tiny_tok), tiny_model_dir)
    half = tmp_path / "half"
    half.mkdir()
    (half / "adapter_config.json").write_text("{}")
    with pytest.raises(CaiError, match="no adapter_model weights"):
        adapters.load_adapter(tiny_model(tiny_tok), half)


def test_adapter_for_other_shapes_is_refused(tiny_tok, tmp_path):
    from tiny import tiny_model

    make_adapter(tiny_model(tiny_tok, hidden=32), tmp_path / "ad")
    with pytest.raises(CaiError, match="does not fit this base model"):
        adapters.load_adapter(tiny_model(tiny_tok, hidden=48), tmp_path / "ad")


def test_identity_and_match_check(tiny_tok, tmp_path):
    from tiny import save_tiny
    from transformers import AutoModelForCausalLM

    a, b = save_tiny(tmp_path / "a", seed=0), save_tiny(tmp_path / "b", seed=1)
    ida = adapters.base_identity(Loaded(AutoModelForCausalLM.from_pretrained(a), a))
    ida2 = adapters.base_identity(Loaded(AutoModelForCausalLM.from_pretrained(a), a))
    idb = adapters.base_identity(Loaded(AutoModelForCausalLM.from_pretrained(b), b))
    assert adapters.identity_mismatch(ida, ida2) is None
    assert "weights_fingerprint" in adapters.identity_mismatch(ida, idb)
    # without a folder the identity falls back to the parameters themselves
    pa = adapters.base_identity(Loaded(AutoModelForCausalLM.from_pretrained(a), ""))
    pb = adapters.base_identity(Loaded(AutoModelForCausalLM.from_pretrained(b), ""))
    assert pa["weights_fingerprint"].startswith("params:") and pa["weights_fingerprint"] != pb["weights_fingerprint"]

    ad = tmp_path / "ad"
    make_adapter(AutoModelForCausalLM.from_pretrained(a), ad)
    with pytest.raises(CaiError, match="cai_adapter.json: missing"):
        adapters.check_adapter_matches(ad, ida)
    (ad / adapters.ADAPTER_META).write_text(json.dumps({"base_identity": ida}))
    assert adapters.check_adapter_matches(ad, ida2)["base_identity"] == ida
    with pytest.raises(CaiError, match="different base model"):
        adapters.check_adapter_matches(ad, idb)
