"""Stage 02's records: the per-step training log, its curves, peak memory, library
versions, and where TRL reports metrics (`report_to`)."""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

from .checkpoints import mark_complete
from .errors import CaiError
from .jsonl import read_json, write_json
from .manifest import library_versions


def peak_memory() -> tuple[int, str]:
    """(bytes, kind): CUDA max allocated on a GPU, else the process's peak RSS."""
    import torch
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda_max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_peak_rss"


_TRAIN_LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "unsloth")


def training_versions() -> dict:
    """The installed versions of the libraries that shape training (absent ones left out)."""
    return {k: v for k, v in library_versions().items() if k in _TRAIN_LIBRARIES and v}


# The package each report_to value needs (TRL/transformers integrations look for these).
REPORT_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "trackio": ("trackio",), "wandb": ("wandb",),
                   "mlflow": ("mlflow",)}


def reporting_args(cfg, run_dir) -> dict:
    """`report_to` and `run_name` for TRL's DPOConfig; the sink's package checked before training.

    tensorboard writes to <run>/tensorboard (TENSORBOARD_LOGGING_DIR, unless set): offline, next
    to the run, so `tensorboard --logdir runs/<id>/tensorboard` shows curves while it trains."""
    import importlib.util
    sink = getattr(cfg, "report_to", "none")
    if sink == "none":
        return {"report_to": "none"}
    needs = REPORT_PACKAGES[sink]
    if not any(importlib.util.find_spec(m) is not None for m in needs):
        raise CaiError(f"report_to={sink} but the package {needs[0]} is not installed — pip install {needs[0]}, "
                       "or set report_to: none")
    if sink == "tensorboard":
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(Path(run_dir) / "tensorboard"))
    return {"report_to": sink, "run_name": Path(run_dir).name}


def log_history_curves(log_history: list[dict], keys=("loss", "rewards/margins", "rewards/accuracies",
                                                      "learning_rate", "grad_norm")) -> dict:
    """{key: ([steps], [values])} from a trainer's log_history (per-step entries only)."""
    out = {k: ([], []) for k in keys}
    for entry in log_history:
        if "loss" not in entry or "step" not in entry:
            continue  # the end-of-training summary (train_loss, train_runtime ...)
        for k in keys:
            if entry.get(k) is not None:
                out[k][0].append(entry["step"])
                out[k][1].append(entry[k])
    return out


def use_text_step_bar(trainer) -> None:
    """One plain tqdm bar of optimizer steps on stderr — what `cai run` turns into its progress
    line — instead of transformers' notebook HTML table (a row per logged step) or its per-step
    dict printout: the metrics are in training_log.json and the report's curves."""
    from tqdm import tqdm  # std tqdm: text even where tqdm.auto would pick a widget
    from transformers import TrainerCallback

    class StepBar(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kw):
            if state.is_world_process_zero:
                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train steps")

        def on_step_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    for cb in list(trainer.callback_handler.callbacks):
        if type(cb).__name__ in ("NotebookProgressCallback", "ProgressCallback", "PrinterCallback"):
            trainer.remove_callback(cb)
    trainer.add_callback(StepBar())


def make_log_callback(log_path: Path, log: dict, session: dict):
    from transformers import TrainerCallback

    class TrainingLogCallback(TrainerCallback):
        """Per-step metrics into results/training_log.json (rewritten atomically each step,
        so an interrupted run keeps every finished step)."""

        def on_train_begin(self, args, state, control, **kw):
            session["start_step"] = state.global_step
            session["t0"] = time.perf_counter()
            session["max_steps"] = state.max_steps
            # Steps after the checkpoint we resumed from were lost with the interruption.
            log["steps"] = [s for s in log["steps"] if s["step"] <= state.global_step]

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if "loss" not in logs or not state.is_world_process_zero:
                return  # the end-of-training summary line, not a step
            elapsed = time.perf_counter() - session["t0"]
            done = state.global_step - session["start_step"]
            mem, kind = peak_memory()
            log["steps"].append({
                "step": state.global_step,
                "epoch": logs.get("epoch"),
                "loss": logs.get("loss"),
                "rewards_chosen": logs.get("rewards/chosen"),
                "rewards_rejected": logs.get("rewards/rejected"),
                "reward_margin": logs.get("rewards/margins"),
                "accuracy": logs.get("rewards/accuracies"),
                "learning_rate": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                "tokens_seen": int(state.num_input_tokens_seen),
                "wall_s": round(elapsed, 3),
                "steps_per_s": round(done / elapsed, 4) if elapsed > 0 else None,
                "peak_memory_bytes": mem,
                "peak_memory_kind": kind,
                "session": session["index"],
            })
            write_json(log_path, log)

        def on_save(self, args, state, control, **kw):
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir() and state.is_world_process_zero:
                mark_complete(ckpt, session["identity_record"], state.global_step)

    return TrainingLogCallback()


def previous_log(log_path: Path, resuming: bool) -> dict:
    """The training log to continue: the earlier sessions' steps when resuming, else empty."""
    log = {"steps": [], "sessions": []}
    if resuming and log_path.exists():
        try:
            prev = read_json(log_path)
            log["steps"], log["sessions"] = prev.get("steps", []), prev.get("sessions", [])
        except CaiError:
            pass  # a damaged log is rebuilt from the resumed step on
    return log
