"""Load a *base* model for stage 1: from a folder, a hub id, a GGUF file or the embedded default.

Every path ends the same way: the tokenizer goes through the contamination guard (chat
template removed, BOS policy fixed), and the model's name is checked for signs of
instruction tuning. Hub downloads never happen implicitly on an offline machine: a
missing hub model is a one-line error saying how to pre-download it.
"""

from __future__ import annotations

import importlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import guard
from .constants import BACKENDS, PURPOSES, QUANTIZATIONS
from .errors import CaiError

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$|^[A-Za-z0-9][\w.-]*$")



def _refuse_instruct(name: str) -> None:
    raise CaiError(
        f"model {name!r} looks instruction-tuned (its name marks it Instruct/-it/chat/sft/dpo); stage 1 "
        "needs a base model - pass a base checkpoint, or set allow_instruct_model: true in the profile (allow_instruct=True in code) to use it deliberately"
    )


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    backend: str
    spec: str
    resolved_path: Path
    info: dict = field(default_factory=dict)


def cuda_available() -> bool:
    """The one CUDA probe of the backend decision and the loaders (tests monkeypatch it)."""
    import torch
    return torch.cuda.is_available()


def _importable(name: str) -> bool:
    """The one package probe: an import attempt, because unsloth raises more than
    ImportError when CUDA or its driver is missing (tests monkeypatch it)."""
    try:
        importlib.import_module(name)
        return True
    except Exception:
        return False


def _check_choice(kind: str, value: str, allowed, fix: str) -> None:
    if value not in allowed:
        raise CaiError(f"unknown {kind} {value!r}: not one of {', '.join(allowed)} — {fix}")


def pick_backend(requested: str = "auto", purpose: str = "generate", quantization: str = "none",
                 world_size: int = 1, *, loaded_backend: str | None = None, cuda: bool | None = None,
                 unsloth: bool | None = None) -> str:
    """The one backend decision, for loading and for training:
    "unsloth" | "transformers" | "transformers+bnb4" | "transformers+bnb8".

    `loader_of(result)` is the loader `load_base` uses (unsloth or transformers); the
    "+bnb" suffix says the transformers model is bitsandbytes-quantized, which training
    prepares with `prepare_model_for_kbit_training`.

    auto -> transformers for generation. Seen on an H100 (gpu-small, embedded 270M, 4-bit): with
    the Unsloth-loaded model stage 00 did not finish within two 10-minute calls (the second made
    no progress at all; cause not established), while transformers + bitsandbytes finished the
    same stage in 192 s. Unsloth's speed-up is a training one, and evaluation must not depend on
    a patched decoding path. An explicit "unsloth" is honoured for both.

    For training, auto -> the fastest backend measured for the weights the profile trains:
    - 4-bit / 8-bit (QLoRA; what large models need to fit): unsloth when CUDA and unsloth are
      both present (H200, Qwen2.5-32B shape: 3.34 vs 8.70 s per step; faster at the 1.5B/7B
      shapes too), else transformers + bitsandbytes.
    - bf16 (quantization none; small models, which fit unquantized): transformers. H200,
      Gemma 3 270M shape, 8 pairs x 128 tokens, precomputed reference: TRL + PEFT bf16 LoRA
      0.177 s per step vs Unsloth 4-bit 0.226 and TRL + bitsandbytes 4-bit 0.229
      (benchmarks/results/bench_dpo_270m_h200.json). Unsloth's own bf16 LoRA was not measured.

    `world_size` > 1 (several training processes): Unsloth's open-source build trains on one
    GPU only, so auto never picks it and an explicit unsloth is refused.
    `loaded_backend`: the loader a model already in memory came from (training follows it:
    a model loaded by Unsloth trains with Unsloth). `cuda` / `unsloth` override the probes.
    Impossible requests are CaiErrors, before anything heavy is loaded.
    """
    _check_choice("load purpose", purpose, PURPOSES, "pass one of them as purpose")
    _check_choice("backend", requested, BACKENDS, "fix `backend` in the profile")
    _check_choice("quantization", quantization, QUANTIZATIONS, "fix `quantization` in the profile")
    cuda = cuda_available() if cuda is None else cuda
    if quantization != "none" and not cuda:
        raise CaiError(f"quantization {quantization} needs a CUDA GPU (bitsandbytes) and this machine has none — "
                       "set quantization: none for CPU")
    if requested == "unsloth" or loaded_backend == "unsloth":
        return _unsloth_checked(requested, world_size, loaded_backend, cuda, unsloth)
    if requested == "auto" and purpose == "train" and world_size <= 1 and loaded_backend is None and cuda \
            and quantization != "none":
        if _importable("unsloth") if unsloth is None else unsloth:
            return "unsloth"
    return {"4bit": "transformers+bnb4", "8bit": "transformers+bnb8"}.get(quantization, "transformers")


def _unsloth_checked(requested: str, world_size: int, loaded_backend: str | None, cuda: bool,
                     unsloth: bool | None) -> str:
    """"unsloth", or the one line saying why this machine / process layout cannot have it."""
    if world_size > 1:
        raise CaiError("backend=unsloth trains on one GPU only — set backend: auto or transformers for multi-GPU "
                       "training (4-bit QLoRA then runs through bitsandbytes)")
    if not cuda:
        if requested == "unsloth":
            raise CaiError("backend unsloth needs a CUDA GPU; on this machine use backend: transformers (or auto)")
        raise CaiError("the model was loaded with Unsloth but there is no CUDA GPU — set backend: transformers")
    if loaded_backend is not None and loaded_backend != "unsloth":
        raise CaiError(f"backend=unsloth but the model was loaded with backend {loaded_backend!r} — "
                       "load it with models.load_base(..., backend='unsloth')")
    if loaded_backend is None and not (_importable("unsloth") if unsloth is None else unsloth):
        raise CaiError("backend unsloth requested but unsloth is not installed - install the gpu extra: pip install -e '.[gpu]'")
    return "unsloth"


def loader_of(backend: str) -> str:
    """The loader behind a `pick_backend` result: "unsloth" or "transformers"."""
    return "unsloth" if backend == "unsloth" else "transformers"


def resolve_dtype(dtype: str = "auto"):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if cuda_available() else torch.float32
    if dtype not in _DTYPES:
        raise CaiError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return getattr(torch, _DTYPES[dtype])


def _quant_config(quantization: str, dtype):
    if quantization == "none":  # name and CUDA already checked by pick_backend
        return None
    if not _importable("bitsandbytes"):
        raise CaiError(f"quantization {quantization} needs bitsandbytes - install the gpu extra: pip install -e '.[gpu]'")
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True)


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_spec(spec: str) -> tuple[Path, str, dict]:
    """(folder to load, name to check for instruction tuning, source info)."""
    spec = str(spec).strip()
    if not spec:
        raise CaiError("base_model is empty; pass a model folder, a hub id, a .gguf file or embedded:gemma-3-270m")
    if spec.startswith("embedded:") or spec == "embedded":
        from .embedded import EMBEDDED, conversion_info, embedded_model_dir

        name = spec.split(":", 1)[1] if ":" in spec else "gemma-3-270m"
        folder = embedded_model_dir(name)
        return folder, EMBEDDED[name]["folder"], {"source": "embedded", "conversion": conversion_info(folder)}
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        from .embedded import conversion_info, gguf_model_dir

        folder = gguf_model_dir(path)
        return folder, path.name, {"source": "gguf", "gguf": str(path), "conversion": conversion_info(folder)}
    if path.is_dir():
        if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            raise CaiError(f"{path} is a LoRA adapter folder, not a base model - pass the base model as base_model "
                           "and load the adapter with cai_lib.adapters.load_adapter")
        if not (path / "config.json").is_file():
            raise CaiError(f"model folder {path} has no config.json - pass a transformers model folder (save_pretrained output)")
        return path, path.resolve().name, {"source": "folder"}
    if path.exists():
        raise CaiError(f"model path {path} is a file; pass its folder, a .gguf file, a hub id or embedded:gemma-3-270m")
    looks_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep in spec.replace("/", "") \
        or not _HUB_ID.match(spec)
    if looks_path:
        raise CaiError(f"model path {spec} does not exist - check base_model (a folder, a .gguf file, a hub id or embedded:gemma-3-270m)")
    return _hub_folder(spec), spec, {"source": "hub", "hub_id": spec}


def _hub_folder(repo_id: str) -> Path:
    how = (f"pre-download it on a machine with network: `huggingface-cli download {repo_id} --local-dir models/"
           f"{repo_id.split('/')[-1]}`, copy the folder here and pass that folder as base_model")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        raise CaiError(f"model {repo_id} is not a local folder and huggingface_hub is missing; {how}") from None
    try:  # the local cache first: never touch the network when the files are already here
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        pass
    if _offline():
        raise CaiError(f"model {repo_id} is not a local folder or in the Hugging Face cache, and the hub is offline; {how}")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CaiError(f"could not download model {repo_id} ({first[:160]}); {how}") from None


def load_base(spec: str, *, dtype: str = "auto", quantization: str = "none", backend: str = "auto",
              trust_remote_code: bool = False, allow_instruct: bool = False,
              purpose: str = "generate") -> Loaded:
    """Load a base model and its guarded tokenizer.

    purpose: "generate" (stages 00/01/03) or "train" (stage 02); it decides what backend=auto
    means (see pick_backend).

    Arguments are validated before anything heavy is loaded, so a typo fails in a second.
    """
    t0 = time.perf_counter()
    torch_dtype = resolve_dtype(dtype)
    chosen = loader_of(pick_backend(backend, purpose, quantization))
    qcfg = _quant_config(quantization, torch_dtype)
    # Name check first, on what the user typed: an instruct hub id is refused before any
    # download is attempted; then again on the resolved name (e.g. the embedded folder).
    typed = str(spec).strip().rstrip("/")
    typed_name = typed if _HUB_ID.match(typed) and not Path(typed).expanduser().exists() else Path(typed).name
    if guard.is_instruct_name(typed_name) and not allow_instruct:
        _refuse_instruct(typed_name)
    folder, check_name, source = resolve_spec(spec)

    flagged = guard.is_instruct_name(check_name) or guard.is_instruct_name(typed_name)
    instruct_check = {"name": check_name, "instruct_like": flagged, "allowed": allow_instruct}
    if flagged and not allow_instruct:
        _refuse_instruct(check_name)

    prequantized = _prequantized(folder)
    if prequantized and not _importable("bitsandbytes"):
        raise CaiError(f"{folder}: the checkpoint is pre-quantized ({prequantized}, bitsandbytes) but bitsandbytes "
                       "is not installed — load it on a CUDA machine with the gpu extra (make setup)")
    if chosen == "unsloth":
        model, tok = _load_unsloth(folder, torch_dtype, quantization, trust_remote_code, purpose)
    else:
        model, tok = _load_transformers(folder, torch_dtype, qcfg, trust_remote_code)

    # Config names can betray an instruct checkpoint behind a neutral folder name.
    for n in (getattr(model.config, "_name_or_path", None), getattr(model.config, "_model_name_or_path", None)):
        if n and Path(str(n)).name not in (check_name, typed_name) and guard.is_instruct_name(Path(str(n)).name):
            instruct_check["config_name"] = n
            instruct_check["instruct_like"] = True
            if not allow_instruct:
                raise CaiError(f"model config names it {n!r}, which looks instruction-tuned; pass a base "
                               "checkpoint, or set allow_instruct_model: true in the profile (allow_instruct=True in code) to use it deliberately")

    guard.strip_chat_template(tok)
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token  # batching needs a pad id; it is masked out anyway
    tok.padding_side = "left"
    pol = guard.bos_policy(tok, model)
    gc = getattr(model, "generation_config", None)
    if gc is not None and gc.eos_token_id is None and tok.eos_token_id is not None:
        gc.eos_token_id = tok.eos_token_id

    info = {
        **source,
        "dtype": str(torch_dtype).replace("torch.", ""),
        # A pre-quantized folder loads quantized whatever was asked: record what was loaded.
        "quantization": prequantized or quantization,
        "device": str(getattr(model, "device", "cpu")),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "trust_remote_code": trust_remote_code,
        "instruct_check": instruct_check,
        "bos_policy": pol["mode"],
        "load_seconds": round(time.perf_counter() - t0, 2),
    }
    return Loaded(model=model, tokenizer=tok, backend=chosen, spec=str(spec), resolved_path=Path(folder), info=info)


def quantization_for(cfg, purpose: str = "generate") -> str:
    """The weights a stage loads: training uses `quantization`; generation stages (00, 01, 03)
    use `gen_quantization`, where "as_train" means the training quantization.

    Both evaluated models (base and trained) come from the one loaded copy (the adapter is
    toggled), so whatever this returns, they share weights and decoding path. A bf16
    generation load skips 4-bit dequantisation on every step and lets transformers compile
    the static-cache decoding step (it does not compile bitsandbytes models).
    """
    if purpose not in PURPOSES:
        raise CaiError(f"unknown load purpose {purpose!r}; use one of {', '.join(PURPOSES)}")
    if purpose == "train":
        return cfg.quantization
    gen = getattr(cfg, "gen_quantization", "as_train")
    if gen == "as_train":
        return cfg.quantization
    if gen not in QUANTIZATIONS:
        raise CaiError(f"unknown gen_quantization {gen!r}; use as_train or one of {', '.join(QUANTIZATIONS)}")
    return gen


def load_configured(cfg, purpose: str = "generate") -> Loaded:
    """load_base with a run's RunConfig: the one call every stage and launcher makes."""
    return load_base(cfg.model, dtype=cfg.dtype, quantization=quantization_for(cfg, purpose), backend=cfg.backend,
                     trust_remote_code=cfg.trust_remote_code, allow_instruct=cfg.allow_instruct_model,
                     purpose=purpose)


def _prequantized(folder: Path) -> str | None:
    """"4bit"/"8bit" when the folder's config.json says its weights are stored quantized."""
    import json
    try:
        qc = json.loads((Path(folder) / "config.json").read_text()).get("quantization_config")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(qc, dict):
        return None
    if qc.get("load_in_4bit"):
        return "4bit"
    if qc.get("load_in_8bit"):
        return "8bit"
    return str(qc.get("quant_method") or "quantized")


def _load_transformers(folder: Path, torch_dtype, qcfg, trust_remote_code: bool):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"trust_remote_code": trust_remote_code, "local_files_only": True}
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), **kw)
        mkw = dict(kw, dtype=torch_dtype)
        if qcfg is not None:
            mkw.update(quantization_config=qcfg, device_map={"": torch.cuda.current_device()})  # this process's GPU under DDP
        model = AutoModelForCausalLM.from_pretrained(str(folder), **mkw)
    except (OSError, ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CaiError(f"could not load a causal LM from {folder}: {first[:200]}") from None
    if qcfg is None and cuda_available():
        model.to("cuda")
    model.eval()
    return model, tok


def unsloth_load_error(exc: Exception, folder: Path) -> Exception:
    """Unsloth's known refusals as one line with the fix; anything else unchanged.

    Seen at Qwen2.5-32B shape (2026-12-03): a tokenizer whose pad token is its EOS and whose
    vocabulary has no spare pad token (Qwen's has <|vision_pad|>) makes Unsloth raise."""
    text = str(exc)
    if "valid pad token" in text:
        return CaiError(f"{folder}: Unsloth found no usable pad token (the tokenizer pads with its EOS and has no "
                        "spare pad token) - add a pad token to the tokenizer folder, or set backend: transformers")
    return exc


def _load_unsloth(folder: Path, torch_dtype, quantization: str, trust_remote_code: bool, purpose: str):
    # Imported here: unsloth patches transformers on import and needs CUDA.
    from unsloth import FastLanguageModel  # type: ignore

    try:
        model, tok = FastLanguageModel.from_pretrained(
            model_name=str(folder),
            dtype=torch_dtype,
            load_in_4bit=quantization == "4bit",
            load_in_8bit=quantization == "8bit",
            trust_remote_code=trust_remote_code,
        )
    except RuntimeError as exc:
        raise unsloth_load_error(exc, folder) from exc
    # For multimodal-capable families unsloth may return a processor; the guard needs the text tokenizer.
    tok = getattr(tok, "tokenizer", tok)
    if purpose == "generate":
        FastLanguageModel.for_inference(model)  # Unsloth's own switch from its training setup to decoding
    return model, tok
