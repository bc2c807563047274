"""LoRA adapters: apply a trained adapter to a base model, toggle it, check it belongs.

Later stages apply the adapter in `<run>/adapter/` to the base model with PEFT
(`PeftModel.from_pretrained`). The adapter folder is never loaded as if it were a model:
it holds only the LoRA matrices, and loading it as a model would either fail or silently
give the base model back (the older system did this in one code path).

Evaluation keeps ONE copy of the base weights: base and trained are compared either by
toggling the adapter (`adapter_disabled`) or, on unquantized weights, by running the base
arms first and then merging the adapter into those weights (`load_adapter(merge=True)`),
which halves memory against two loaded models and guarantees both see identical base
weights. `base_view` is the one way to ask for "the base model" and refuses merged weights.

Every adapter written by `train.train_dpo` carries `cai_adapter.json` with the identity
of the base model it was trained on (`base_identity`); `check_adapter_matches` refuses to
pair it with another base.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

from .errors import CaiError

ADAPTER_META = "cai_adapter.json"
ADAPTER_CONFIG = "adapter_config.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# Keys of the identity that must agree for an adapter or checkpoint to fit a base model.
# The spec and path are recorded for people but not compared: the same weights can be
# named `embedded:gemma-3-270m` here and a copied folder on a rented GPU.
IDENTITY_KEYS = ("model_type", "config_sha256", "weights_fingerprint")
# Load-time settings that change the in-memory config but not the model's identity
# (an adapter trained on a 4-bit base applies to the bf16 base: that is QLoRA).
_VOLATILE_CONFIG_KEYS = {
    "quantization_config", "torch_dtype", "dtype", "_name_or_path", "transformers_version",
    "pad_token_id", "use_cache", "architectures", "_attn_implementation_autoset", "unsloth_version",
    "unsloth_fixed",
}


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_fingerprint(path: Path) -> str:
    """Size + sha256 of the first and last MiB: cheap on a 64 GB checkpoint, and it
    covers the safetensors header (every tensor name, shape and offset) and real data."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(size - (1 << 20))
            h.update(fh.read(1 << 20))
        elif size > 1 << 20:
            h.update(fh.read())
    return h.hexdigest()


def _config_sha(config_dict: dict) -> str:
    text_cfg = config_dict.get("text_config") if isinstance(config_dict.get("text_config"), dict) else None
    clean = {k: v for k, v in config_dict.items() if k not in _VOLATILE_CONFIG_KEYS}
    if text_cfg is not None:
        clean["text_config"] = {k: v for k, v in text_cfg.items() if k not in _VOLATILE_CONFIG_KEYS}
    return _sha256_bytes(json.dumps(clean, sort_keys=True, default=str).encode())


def _param_fingerprint(model) -> str:
    """Fallback when the weights are not in a local folder: names, shapes and the first
    values of every parameter (quantized weights hash as their packed bytes)."""
    h = hashlib.sha256()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name, p in sorted(base.state_dict().items()):
        if "lora_" in name:
            continue
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        flat = p.detach().reshape(-1)[:256].float().cpu().numpy().tobytes()
        h.update(flat)
    return h.hexdigest()


def base_identity(loaded) -> dict:
    """Identity of the base model behind a `models.Loaded` (or any object with `model`,
    `spec`, `resolved_path`, `info`). Compared keys: IDENTITY_KEYS."""
    model = loaded.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    resolved = getattr(loaded, "resolved_path", None)
    folder = Path(resolved) if resolved else None
    ident = {
        "spec": str(getattr(loaded, "spec", "") or ""),
        "resolved_path": str(resolved or ""),
        "model_type": getattr(cfg, "model_type", type(base).__name__),
        "model_class": type(base).__name__,
    }
    if folder is not None and folder.is_dir() and (folder / "config.json").exists():
        ident["config_sha256"] = _config_sha(json.loads((folder / "config.json").read_text()))
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
        if files:
            h = hashlib.sha256()
            for p in files:
                h.update(p.name.encode())
                h.update(_file_fingerprint(p).encode())
            ident["weights_fingerprint"] = "files:" + h.hexdigest()
    elif folder is not None and folder.is_file():  # e.g. a .gguf file
        ident["config_sha256"] = _config_sha(cfg.to_dict()) if cfg is not None else ""
        ident["weights_fingerprint"] = "files:" + _file_fingerprint(folder)
    if "config_sha256" not in ident:
        ident["config_sha256"] = _config_sha(cfg.to_dict()) if cfg is not None else ""
    if "weights_fingerprint" not in ident:
        ident["weights_fingerprint"] = "params:" + _param_fingerprint(model)
    info = getattr(loaded, "info", None) or {}
    for key in ("weights_sha256", "model_sha256", "hash"):
        if key in info:
            ident["info_" + key] = info[key]
    return ident


def identity_mismatch(recorded: dict, current: dict) -> str | None:
    """The first identity key that differs, as a readable phrase; None when they match."""
    for key in IDENTITY_KEYS:
        if recorded.get(key) != current.get(key):
            return f"{key} differs (recorded base {recorded.get('spec') or recorded.get('resolved_path')!r}, current {current.get('spec') or current.get('resolved_path')!r})"
    return None


def _require_adapter_dir(adapter_dir) -> Path:
    p = Path(adapter_dir)
    if not p.is_dir():
        raise CaiError(f"{p}: adapter folder not found — run stage 02_train first (it writes <run>/adapter)")
    if not (p / ADAPTER_CONFIG).exists():
        hint = " (this looks like a full model folder, not a LoRA adapter)" if (p / "config.json").exists() else ""
        raise CaiError(f"{p}: no {ADAPTER_CONFIG}, so not a PEFT adapter folder{hint} — point at <run>/adapter")
    if not any((p / n).exists() for n in ("adapter_model.safetensors", "adapter_model.bin")):
        raise CaiError(f"{p}: adapter_config.json but no adapter_model weights — training did not finish; rerun 02_train")
    return p


def read_adapter_meta(adapter_dir) -> dict:
    p = _require_adapter_dir(adapter_dir)
    meta = p / ADAPTER_META
    if not meta.exists():
        raise CaiError(f"{meta}: missing — this adapter was not written by cai train; retrain it with 02_train")
    try:
        return json.loads(meta.read_text())
    except json.JSONDecodeError as exc:
        raise CaiError(f"{meta}: not valid JSON ({exc.msg}) — retrain with 02_train") from None


def check_adapter_matches(adapter_dir, base_identity_or_loaded, meta: dict | None = None) -> dict:
    """Raise CaiError unless the adapter was trained on this base; returns its metadata.

    Accepts an identity dict (from `base_identity`) or a Loaded-like object; `meta` is the
    adapter's metadata when the caller already read it (read_adapter_meta)."""
    current = base_identity_or_loaded
    if not isinstance(current, dict):
        current = base_identity(current)
    meta = read_adapter_meta(adapter_dir) if meta is None else meta
    why = identity_mismatch(meta.get("base_identity", {}), current)
    if why:
        raise CaiError(f"{adapter_dir}: adapter was trained on a different base model — {why}; load the base it was trained on or retrain")
    return meta


def load_adapter(base_model, adapter_dir, *, merge: bool = False, is_trainable: bool = False):
    """Apply the LoRA adapter in `adapter_dir` to `base_model` with PEFT.

    Returns a PeftModel (toggle with `adapter_disabled`), or with `merge=True` the base
    model with the LoRA product folded into its weights (faster generation, but the
    base weights are changed in place and the adapter can no longer be disabled).
    PEFT injects LoRA layers into `base_model` itself, so pass a model you own.
    """
    from peft import PeftModel

    p = _require_adapter_dir(adapter_dir)
    try:
        model = PeftModel.from_pretrained(base_model, str(p), is_trainable=is_trainable)
    except (ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CaiError(f"{p}: adapter does not fit this base model ({first[:200]}) — load the base it was trained on") from None
    if merge:
        if getattr(base_model, "is_loaded_in_4bit", False) or getattr(base_model, "is_loaded_in_8bit", False):
            # Folding LoRA into quantized weights re-rounds them: the merged model is not
            # the trained one. Keep the adapter unmerged on a quantized base.
            raise CaiError("merge=True on a 4/8-bit base would re-quantize the merged weights — load the base unquantized or use merge=False")
        model = model.merge_and_unload()
        # from here these weights are the trained model: base_view refuses them
        setattr(model, MERGED_FLAG, str(p))
    model.eval()
    return model


# Attribute set on a model whose weights carry a merged adapter (its value: the adapter folder).
MERGED_FLAG = "cai_merged_adapter"


@contextlib.contextmanager
def base_view(model):
    """The base model for the block: a PeftModel with its adapter switched off, or a plain model
    whose weights no adapter was merged into. A merged model is refused (it is the trained one)."""
    if hasattr(model, "disable_adapter"):
        with adapter_disabled(model):
            yield model
        return
    merged = getattr(model, MERGED_FLAG, None)
    if merged:
        raise CaiError(f"the adapter {merged} is merged into these weights, so they are not the base model - "
                       "run the base arms before merging (evaluate.generate_three does)")
    yield model


@contextlib.contextmanager
def adapter_disabled(model):
    """Run the base model: the adapter of a PeftModel is switched off inside the block."""
    if not hasattr(model, "disable_adapter"):
        raise CaiError("adapter_disabled needs a model with a LoRA adapter attached (load_adapter with merge=False)")
    with model.disable_adapter():
        yield model
