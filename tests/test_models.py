"""load_base: sources, guard wiring, instruct refusal, and one-line errors for bad input."""

import shutil

import pytest
import torch

from cai_lib import models
from cai_lib.errors import CaiError


def test_load_folder(tiny_model_dir):
    loaded = models.load_base(str(tiny_model_dir))
    assert isinstance(loaded, models.Loaded)
    assert loaded.backend == "transformers"  # CPU machine: auto never picks unsloth
    assert loaded.resolved_path == tiny_model_dir
    assert loaded.tokenizer.chat_template is None  # the saved folder has one; the guard removed it
    assert loaded.tokenizer._cai_guard["had_chat_template"]
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.model.dtype == torch.float32 and not loaded.model.training
    assert loaded.info["source"] == "folder" and loaded.info["dtype"] == "float32"
    assert loaded.info["trust_remote_code"] is False and loaded.info["bos_policy"] == "prepend"
    assert loaded.info["n_parameters"] == sum(p.numel() for p in loaded.model.parameters())


def test_explicit_dtype(tiny_model_dir):
    loaded = models.load_base(str(tiny_model_dir), dtype="bfloat16")
    assert loaded.model.dtype == torch.bfloat16


def test_trust_remote_code_off_by_default(tiny_model_dir, monkeypatch):
    import transformers
    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*a, **k):
        seen.append(k.get("trust_remote_code"))
        return real(*a, **k)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    models.load_base(str(tiny_model_dir))
    models.load_base(str(tiny_model_dir), trust_remote_code=True)
    assert seen == [False, True]


@pytest.mark.parametrize("spec", ["/nonexistent/model-dir", "./no/such/folder", "~/missing-model-xyz/"])
def test_missing_path(spec):
    with pytest.raises(CaiError, match="does not exist"):
        models.load_base(spec)


def test_missing_gguf():
    with pytest.raises(CaiError, match="does not exist"):
        models.load_base("/nonexistent/model.gguf")


def test_gguf_sidecar_checksum_mismatch(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF not really")
    (tmp_path / "m.gguf.sha256").write_text("0" * 64 + "  m.gguf\n")
    with pytest.raises(CaiError, match="fails its checksum") as e:
        models.load_base(str(f))
    assert "\n" not in str(e.value)


def test_folder_without_config(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(CaiError, match="no config.json"):
        models.load_base(str(tmp_path / "weights"))


def test_adapter_folder_is_not_a_base_model(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(CaiError, match="LoRA adapter folder"):
        models.load_base(str(tmp_path / "adapter"))


def test_file_that_is_not_a_model(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    with pytest.raises(CaiError, match="is a file"):
        models.load_base(str(f))


def test_hub_id_offline_says_how_to_predownload(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # empty cache
    with pytest.raises(CaiError) as e:
        models.load_base("someone/some-base-model-1b")
    msg = str(e.value)
    assert "huggingface-cli download someone/some-base-model-1b" in msg and "offline" in msg
    assert "\n" not in msg


def test_unknown_embedded_name():
    with pytest.raises(CaiError, match="unknown embedded model"):
        models.load_base("embedded:llama-7b")


@pytest.mark.parametrize("kw,match", [
    ({"backend": "vllm"}, "unknown backend"),
    ({"backend": "unsloth"}, "CUDA"),
    ({"quantization": "4bit"}, "needs a CUDA GPU"),
    ({"quantization": "8bit"}, "needs a CUDA GPU"),
    ({"quantization": "3bit"}, "unknown quantization"),
    ({"dtype": "float8"}, "unknown dtype"),
])
def test_bad_options_fail_fast(kw, match, tiny_model_dir):
    with pytest.raises(CaiError, match=match):
        models.load_base(str(tiny_model_dir), **kw)


def test_pick_backend_on_cpu():
    assert models.pick_backend("auto") == "transformers"
    assert models.pick_backend("transformers") == "transformers"
    assert models.pick_backend("auto", "train") == "transformers"


def test_auto_backend_uses_unsloth_for_training_only(monkeypatch):
    """On a CUDA machine with Unsloth, auto trains with Unsloth but generates with transformers."""
    monkeypatch.setattr(models, "cuda_available", lambda: True)
    monkeypatch.setattr(models, "_importable", lambda name: True)
    assert models.pick_backend("auto", "train", "4bit") == "unsloth"
    assert models.pick_backend("auto", "generate", "4bit") == "transformers+bnb4"
    assert models.pick_backend("unsloth", "generate") == "unsloth"  # explicit choice honoured
    with pytest.raises(CaiError, match="unknown load purpose"):
        models.pick_backend("auto", "serve")


def test_training_backend_follows_the_machine():
    """purpose="train": the backend names training acts on (bitsandbytes base → +bnb)."""
    pb = models.pick_backend
    assert pb("auto", "train", "none", cuda=False) == "transformers"
    assert pb("transformers", "train", "none", cuda=False) == "transformers"
    assert pb("auto", "train", "4bit", cuda=True, unsloth=True) == "unsloth"
    assert pb("auto", "train", "8bit", cuda=True, unsloth=True) == "unsloth"
    # bf16 LoRA: transformers measured fastest (270M shape, H200); Unsloth only when asked
    assert pb("auto", "train", "none", cuda=True, unsloth=True) == "transformers"
    assert pb("unsloth", "train", "none", cuda=True, unsloth=True) == "unsloth"
    assert pb("auto", "train", "4bit", cuda=True, unsloth=False) == "transformers+bnb4"
    assert pb("transformers", "train", "4bit", cuda=True, unsloth=True, loaded_backend="transformers") == "transformers+bnb4"
    assert pb("auto", "train", "4bit", cuda=True, loaded_backend="unsloth") == "unsloth"
    with pytest.raises(CaiError, match="unsloth needs a CUDA GPU"):
        pb("unsloth", "train", "none", cuda=False)
    with pytest.raises(CaiError, match="needs a CUDA GPU"):
        pb("auto", "train", "4bit", cuda=False)
    with pytest.raises(CaiError, match="not one of"):
        pb("deepspeed", "train", "none", cuda=False)
    with pytest.raises(CaiError, match="not installed"):
        pb("unsloth", "train", "4bit", cuda=True, unsloth=False)


def test_several_processes_never_train_with_unsloth():
    pb = models.pick_backend
    assert pb("auto", "train", "none", 2, cuda=True, unsloth=True) == "transformers"
    assert pb("auto", "train", "4bit", 2, cuda=True, unsloth=True) == "transformers+bnb4"
    assert pb("unsloth", "train", "none", 1, cuda=True, unsloth=True) == "unsloth"
    with pytest.raises(CaiError, match="one GPU only"):
        pb("unsloth", "train", "none", 2, cuda=True, unsloth=True)
    with pytest.raises(CaiError, match="one GPU only"):
        pb("auto", "train", "none", 2, cuda=True, loaded_backend="unsloth")
    assert models.loader_of("transformers+bnb4") == "transformers" and models.loader_of("unsloth") == "unsloth"


def test_instruct_named_model_refused_unless_allowed(tiny_model_dir, tmp_path):
    it_dir = tmp_path / "tiny-3-270m-it"
    shutil.copytree(tiny_model_dir, it_dir)
    with pytest.raises(CaiError, match="looks instruction-tuned"):
        models.load_base(str(it_dir))
    loaded = models.load_base(str(it_dir), allow_instruct=True)
    assert loaded.info["instruct_check"] == {"name": "tiny-3-270m-it", "instruct_like": True, "allowed": True}
    assert loaded.tokenizer.chat_template is None  # allowed, but still guarded


def test_instruct_hub_id_refused_before_any_download(monkeypatch):
    called = []

    def no_hub(rid):
        called.append(rid)
        raise AssertionError("must not reach the hub")

    monkeypatch.setattr(models, "_hub_folder", no_hub)
    with pytest.raises(CaiError, match="instruction-tuned"):
        models.load_base("google/gemma-3-270m-it")
    assert not called


def test_unsloth_backend_uses_fast_language_model(tiny_model_dir, monkeypatch):
    """The CUDA-only path, exercised with a stand-in FastLanguageModel (no GPU here)."""
    import sys
    import types

    from tiny import tiny_model, tiny_tokenizer
    calls = {}

    class FakeFLM:
        @staticmethod
        def from_pretrained(**kw):
            calls.update(kw)
            t = tiny_tokenizer()
            return tiny_model(t), types.SimpleNamespace(tokenizer=t)  # processor-like wrapper

        @staticmethod
        def for_inference(model):
            calls["for_inference"] = calls.get("for_inference", 0) + 1

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FakeFLM))
    monkeypatch.setattr(models, "cuda_available", lambda: True)
    loaded = models.load_base(str(tiny_model_dir), dtype="float32", purpose="train", backend="unsloth")
    assert loaded.backend == "unsloth"
    assert calls["model_name"] == str(tiny_model_dir) and calls["load_in_4bit"] is False
    assert calls["dtype"] == torch.float32 and calls["trust_remote_code"] is False
    assert loaded.tokenizer.chat_template is None
    assert "for_inference" not in calls  # a training load stays in training mode
    assert models.load_base(str(tiny_model_dir), dtype="float32", backend="unsloth").backend == "unsloth"
    assert calls["for_inference"] == 1  # an explicit Unsloth generation load switches to its decoding path


def test_unsloth_pad_token_refusal_is_one_line(tmp_path):
    """Unsloth's RuntimeError for a pad == EOS tokenizer (seen at 32B shape) becomes a CaiError with the fix."""
    from cai_lib.errors import CaiError
    from cai_lib.models import unsloth_load_error

    exc = RuntimeError(f"Unsloth: Could not find a valid pad token for {tmp_path} - please inspect the tokenizer.")
    err = unsloth_load_error(exc, tmp_path)
    assert isinstance(err, CaiError) and "\n" not in str(err)
    assert "pad token" in str(err) and "backend: transformers" in str(err)
    other = RuntimeError("CUDA error: device-side assert")
    assert unsloth_load_error(other, tmp_path) is other  # unknown failures are not disguised
