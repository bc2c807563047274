"""Stage 02's checkpoints: whose they are, whether a rerun may continue them, and the
atomic save of the finished adapter.

Checkpoints are written every `save_steps` under `<run>/checkpoints/`; a checkpoint counts
only once `cai_checkpoint.json` is written into it (after the trainer finished writing
it), and a rerun continues from the newest such checkpoint with optimizer, scheduler and
RNG state. A checkpoint folder recorded for another base model (or, when resuming,
other pairs / training settings) is a CaiError and nothing is touched.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .adapters import ADAPTER_META, base_identity, identity_mismatch
from .distributed import barrier, dist_info
from .errors import CaiError
from .jsonl import read_json, write_json

CKPT_META = "cai_checkpoint.json"
RUN_META = "cai_train_identity.json"
# Settings that shape the training trajectory: a checkpoint made with other values must
# not be continued (save_steps / save_total_limit / progress don't change the result).
TRAJECTORY_FIELDS = (
    "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "beta", "loss_type", "loss_weights",
    "chosen_leading_space", "learning_rate", "num_epochs", "max_steps", "per_device_batch_size",
    "gradient_accumulation_steps", "max_length", "max_prompt_length", "warmup_ratio",
    "precompute_ref_log_probs", "gradient_checkpointing", "seed", "quantization",
)
TRAIN_FIELDS = TRAJECTORY_FIELDS + ("save_steps", "save_total_limit", "model", "backend", "dtype")


def identity_record(loaded, cfg, pairs_sha: str) -> dict:
    """What a checkpoint must match to be continued: base model, pairs file, trajectory settings."""
    return {
        "base_identity": base_identity(loaded),
        "pairs_sha256": pairs_sha,
        "trajectory": {k: getattr(cfg, k) for k in TRAJECTORY_FIELDS if hasattr(cfg, k)},
    }


def mark_complete(ckpt: Path, record: dict, global_step: int) -> None:
    """Written after the trainer finished the folder: its presence marks it complete."""
    write_json(ckpt / CKPT_META, {**record, "global_step": global_step})


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoint folders with their completion marker, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.glob("checkpoint-*"):
        tail = p.name.rsplit("-", 1)[-1]
        if p.is_dir() and tail.isdigit() and (p / CKPT_META).exists() and (p / "trainer_state.json").exists():
            found.append((int(tail), p))
    return [p for _, p in sorted(found)]


def check_checkpoints(ckpt_dir: Path, record: dict, resume: bool) -> Path | None:
    """Validate existing checkpoints against this run; returns the one to resume from.

    A checkpoint of another base model is always an error (never overwritten). Other
    pairs or settings are an error only when resuming; resume=False clears them."""
    metas = []
    if (ckpt_dir / RUN_META).exists():
        metas.append((ckpt_dir / RUN_META, read_json(ckpt_dir / RUN_META)))
    done = complete_checkpoints(ckpt_dir)
    for p in done:
        metas.append((p / CKPT_META, read_json(p / CKPT_META)))
    for where, meta in metas:
        why = identity_mismatch(meta.get("base_identity", {}), record["base_identity"])
        if why:
            raise CaiError(f"{where}: checkpoint belongs to a different base model — {why}; use a new run directory or delete {ckpt_dir}")
    if not resume:
        return None
    for where, meta in metas:
        if meta.get("pairs_sha256") != record["pairs_sha256"]:
            raise CaiError(f"{where}: checkpoint was trained on a different pairs file — delete {ckpt_dir} (or train with resume=False) to start over")
        if meta.get("trajectory") != record["trajectory"]:
            diff = sorted(k for k in record["trajectory"] if meta.get("trajectory", {}).get(k) != record["trajectory"][k])
            raise CaiError(f"{where}: checkpoint was trained with other settings ({', '.join(diff)}) — restore them, or delete {ckpt_dir} to start over")
    return done[-1] if done else None


def prepare_checkpoints(ckpt_dir: Path, record: dict, resume: bool) -> Path | None:
    """Check the folder, clear it for a fresh start, mark it as this run's; returns the
    checkpoint to resume from (None: from scratch). Collective with several processes."""
    info = dist_info()
    resume_from = check_checkpoints(ckpt_dir, record, resume)
    if info.world > 1:
        barrier()  # every process has read the checkpoints before the main one may clear them
    if info.is_main:
        if not resume and ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_json(ckpt_dir / RUN_META, record)
    if info.world > 1:
        barrier()  # nobody starts (or saves a checkpoint) before the main process cleared/marked the folder
    return resume_from


def save_adapter(trainer, adapter_dir: Path, meta: dict) -> None:
    """Write the adapter next to its final place, then swap: never a half-written adapter/.

    With several processes the save is collective (`trainer.save_model` gathers sharded
    FSDP / ZeRO-3 weights) and only the main process writes."""
    info = dist_info()
    tmp = adapter_dir.with_name(f".{adapter_dir.name}.tmp")
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    if info.world > 1:
        barrier()
        trainer.save_model(str(tmp))
        barrier()
        if not info.is_main:
            return
    else:
        model = trainer.model
        kwargs = {}
        if len(getattr(model, "peft_config", {})) > 1:  # TRL adds a frozen "ref" copy for pre-wrapped models
            kwargs["selected_adapters"] = ["default"]
        model.save_pretrained(str(tmp), **kwargs)
    from .model_card import finalize_adapter_folder
    finalize_adapter_folder(tmp, meta)  # portable base id in adapter_config.json; README.md model card
    write_json(tmp / ADAPTER_META, meta)
    old = adapter_dir.with_name(f".{adapter_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if adapter_dir.exists():
        os.replace(adapter_dir, old)
    os.replace(tmp, adapter_dir)
    shutil.rmtree(old, ignore_errors=True)
