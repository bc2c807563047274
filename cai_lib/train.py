"""Stage 02: DPO with a LoRA adapter (TRL `DPOTrainer` + PEFT), resumable and measured.

Tokenization — why this module tokenizes instead of TRL
-------------------------------------------------------
TRL 1.15 and 1.16 (same `_prepare_dataset` in both) tokenize a plain-text pair as
`tokenizer(prompt)` and `tokenizer(prompt + chosen + eos_token)` and start the completion
where the two diverge. Three problems for a base model evaluated on raw instructions:
(1) whether BOS appears depends on the tokenizer's post-processor, not on what
evaluation feeds; (2) tokens can merge across the prompt/completion boundary, and then
the prompt the model trains on is not the token sequence it sees at evaluation (TRL then
moves the merged tail of the prompt into the completion, with a warning); (3) EOS is
appended as *text* and re-tokenized. So `encode_pair` builds the ids itself and a
`DPOTrainer` subclass skips TRL's text pass (`_prepare_dataset` returns the dataset as
is; the collator, loss and logging are TRL's):

    prompt_ids = guard.encode_prompts([instruction])  exactly what evaluation encodes: [BOS] + ids
    chosen_ids = tokenize(SEP + chosen.strip()) + [EOS]
    rejected_ids = tokenize(SEP + rejected.strip()) + [EOS]

The prompt is the raw instruction, unchanged (no newline added, no chat template ever),
because that is what evaluation presents. The separator belongs to the completion, so
the model learns to emit it: SEP = "\\n" when `chosen_leading_space` is False (the
answer starts on the line after the instruction; "" if the instruction already ends in
a newline) and " " when True (the answer continues the instruction's line). Chosen and
rejected get the same separator, so it cancels in the DPO margin and only the SFT term
sees it. The completion is tokenized as the suffix of `tokenize(instruction + SEP +
text)` when that keeps the prompt's tokens intact (the tokenization the model met in
pre-training), otherwise on its own (counted as `boundary_retokenized`).

Pairs too long are dropped, never truncated (a cut chosen loses its EOS and would teach
the model not to stop): a pair is dropped when its prompt exceeds `max_prompt_length`
tokens or prompt + chosen or prompt + rejected exceeds `max_length`. Counts are
reported; pairs whose chosen or rejected is empty, or identical to each other, are
dropped too (no preference to learn), and so are completions holding special-token text
(an "<eos>" inside an answer would tokenize to EOS mid-answer). All dropped is a CaiError.

Backends: "unsloth" (CUDA: Unsloth FastLanguageModel 4-bit QLoRA, adapter via
`FastLanguageModel.get_peft_model`), "transformers+bnb4"/"transformers+bnb8" (CUDA:
bitsandbytes base, `prepare_model_for_kbit_training`, adapter via TRL's `peft_config`),
"transformers" (CPU fp32, CUDA bf16). The reference model is always the policy itself
with the adapter off: one copy of the base weights.

Resume: checkpoints every `save_steps` under `<run>/checkpoints/`; a checkpoint counts
only once `cai_checkpoint.json` is written into it (after the trainer finished writing
it), and a rerun continues from the newest such checkpoint with optimizer, scheduler and
RNG state. A checkpoint folder recorded for another base model (or, when resuming,
other pairs / training settings) is a CaiError and nothing is touched.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

from . import guard
from .adapters import ADAPTER_META, base_identity, identity_mismatch
from .errors import CaiError
from .manifest import library_versions
from .constants import BACKENDS, QUANTIZATIONS
from .jsonl import read_json, read_jsonl, sha256_file, write_json
from .runs import run_paths

PAIR_FIELDS = ("prompt", "chosen", "rejected")
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


def _dist():
    """(is_main, world_size, barrier) for this process; plain single process without a launcher."""
    from accelerate import PartialState
    st = PartialState()
    return st.is_main_process, st.num_processes, st.wait_for_everyone


# ---------------------------------------------------------------------------------------
# pairs → token ids
# ---------------------------------------------------------------------------------------

def load_pairs(path) -> list[dict]:
    """Read and validate the pairs file: one JSON object per line with string
    prompt/chosen/rejected. Empty or malformed → CaiError naming the line."""
    path = Path(path)
    rows = read_jsonl(path, required=PAIR_FIELDS)
    if not rows:
        raise CaiError(f"{path}: no preference pairs — rerun stage 01_generate (it writes data/preference_pairs.jsonl)")
    for i, row in enumerate(rows, 1):
        for key in PAIR_FIELDS:
            if not isinstance(row[key], str):
                raise CaiError(f"{path}: pair {i}: field {key!r} must be a string, got {type(row[key]).__name__} — fix or regenerate the pairs file")
    return rows


def completion_text(prompt: str, text: str, leading_space: bool) -> str:
    """What the model should write after the raw instruction (before EOS)."""
    body = text.strip()
    if leading_space:
        return " " + body
    return ("" if prompt.endswith("\n") else "\n") + body


def answer_text(row: dict, key: str) -> str:
    """The raw answer of a pair: `chosen_answer` / `rejected_answer` when the file has them
    (pairs.trl_record), else `chosen` / `rejected` (hand-made files). The separator is always
    the config's, so a file written with another `chosen_leading_space` trains consistently."""
    raw = row.get(f"{key}_answer")
    return raw if isinstance(raw, str) else row[key]


def encode_prompt(tokenizer, text: str) -> list[int]:
    """The ids evaluation feeds the model: `guard.encode_prompts` (one BOS where the
    tokenizer/model use one, then the raw text; chat markers refused), shared with
    `generate.generate` so training and evaluation prompts are the same tokens."""
    from .guard import encode_prompts
    return encode_prompts(tokenizer, [text])[0]


def _encode_completion(tokenizer, prompt: str, prompt_body: list[int], completion: str) -> tuple[list[int], bool]:
    """Completion ids (no EOS); True when the joint tokenization merged across the boundary."""
    joint = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    if joint[: len(prompt_body)] == prompt_body:
        return list(joint[len(prompt_body):]), False
    return list(tokenizer(completion, add_special_tokens=False)["input_ids"]), True


def encode_pair(tokenizer, row: dict, *, leading_space: bool) -> dict:
    prompt = row["prompt"]
    eos = tokenizer.eos_token_id
    if eos is None:
        raise CaiError("the tokenizer has no eos_token — training must teach the model to stop; use a tokenizer with an EOS token")
    prompt_ids = encode_prompt(tokenizer, prompt)
    body = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if prompt_ids[len(prompt_ids) - len(body):] != body:
        raise CaiError(f"internal: prompt encoding is not BOS + text for {prompt[:40]!r}")
    out = {"prompt_ids": prompt_ids, "boundary_retokenized": False, "special_in_completion": False}
    # the guard's set: all_special_ids misses added specials such as Gemma's <start_of_turn>
    specials = guard.special_ids(tokenizer)
    for key in ("chosen", "rejected"):
        ids, merged = _encode_completion(tokenizer, prompt, body,
                                         completion_text(prompt, answer_text(row, key), leading_space))
        out["special_in_completion"] |= any(t in specials for t in ids)
        out[f"{key}_ids"] = ids + [eos]
        out["boundary_retokenized"] |= merged
    return out


def prepare_pairs(tokenizer, rows: list[dict], cfg, *, source="pairs") -> tuple[list[dict], dict]:
    """Encode every pair and apply the drop rules; returns (records, counts)."""
    counts = {"total": len(rows), "used": 0, "dropped_prompt_too_long": 0, "dropped_too_long": 0,
              "dropped_empty": 0, "dropped_identical": 0, "dropped_special_tokens": 0, "boundary_retokenized": 0}
    records = []
    for i, row in enumerate(rows, 1):
        chosen, rejected = answer_text(row, "chosen"), answer_text(row, "rejected")
        # An empty rejected is kept only when the data stage made it on purpose: "ended at once"
        # (EOS immediately) is a failure the model must learn to avoid (pairs.py, pair_type).
        if not chosen.strip() or (not rejected.strip() and row.get("pair_type") != "empty_rejected"):
            counts["dropped_empty"] += 1
            continue
        if chosen.strip() == rejected.strip():
            counts["dropped_identical"] += 1
            continue
        try:
            enc = encode_pair(tokenizer, row, leading_space=cfg.chosen_leading_space)
        except CaiError as exc:
            raise CaiError(f"{source}: pair {i}: {exc}") from None
        if enc.pop("special_in_completion"):
            # e.g. "<eos>" written out as text: it would tokenize to a second EOS mid-answer
            counts["dropped_special_tokens"] += 1
            continue
        n_p = len(enc["prompt_ids"])
        if n_p > cfg.max_prompt_length:
            counts["dropped_prompt_too_long"] += 1
            continue
        if n_p + max(len(enc["chosen_ids"]), len(enc["rejected_ids"])) > cfg.max_length:
            counts["dropped_too_long"] += 1
            continue
        counts["boundary_retokenized"] += int(enc.pop("boundary_retokenized"))
        records.append(enc)
    counts["used"] = len(records)
    counts["tokens_per_epoch"] = sum(len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in records)
    if not records:
        raise CaiError(
            f"{source}: all {counts['total']} pairs were dropped ({counts['dropped_prompt_too_long']} prompt > "
            f"max_prompt_length={cfg.max_prompt_length}, {counts['dropped_too_long']} longer than "
            f"max_length={cfg.max_length}, {counts['dropped_empty']} empty, {counts['dropped_identical']} identical) "
            "— raise max_length/max_prompt_length or regenerate the pairs")
    return records, counts


# ---------------------------------------------------------------------------------------
# backend
# ---------------------------------------------------------------------------------------

def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def _unsloth_importable() -> bool:
    import importlib.util
    return importlib.util.find_spec("unsloth") is not None


def pick_training_backend(requested: str = "auto", quantization: str = "none", *, loaded_backend: str | None = None,
                          cuda: bool | None = None, unsloth: bool | None = None) -> str:
    """The backend for this machine: unsloth | transformers+bnb4 | transformers+bnb8 | transformers.

    `loaded_backend` is what `models.load_base` used (a model loaded by Unsloth trains
    with Unsloth). Impossible requests (unsloth or 4/8-bit without CUDA, unknown names)
    are CaiErrors."""
    if requested not in BACKENDS:
        raise CaiError(f"backend={requested!r} is not one of {list(BACKENDS)} — fix `backend` in the profile")
    if quantization not in QUANTIZATIONS:
        raise CaiError(f"quantization={quantization!r} is not one of {list(QUANTIZATIONS)} — fix `quantization` in the profile")
    cuda = _cuda_available() if cuda is None else cuda
    if quantization != "none" and not cuda:
        raise CaiError(f"quantization={quantization} needs a CUDA GPU (bitsandbytes) and this machine has none — set quantization: none for CPU")
    if requested == "unsloth":
        if not cuda:
            raise CaiError("backend=unsloth needs a CUDA GPU and this machine has none — set backend: auto or transformers")
        unsloth = _unsloth_importable() if unsloth is None else unsloth
        if not unsloth:
            raise CaiError("backend=unsloth but the unsloth package is not installed — install the GPU extras or set backend: transformers")
    if loaded_backend is not None and requested == "unsloth" and loaded_backend != "unsloth":
        raise CaiError(f"backend=unsloth but the model was loaded with backend {loaded_backend!r} — load it with models.load_base(..., backend='unsloth')")
    if loaded_backend == "unsloth" or (loaded_backend is None and requested == "unsloth"):
        if not cuda:
            raise CaiError("the model was loaded with Unsloth but there is no CUDA GPU — set backend: transformers")
        return "unsloth"
    if requested == "auto" and loaded_backend is None and cuda and quantization == "4bit":
        unsloth = _unsloth_importable() if unsloth is None else unsloth
        if unsloth:
            return "unsloth"
    if quantization == "4bit":
        return "transformers+bnb4"
    if quantization == "8bit":
        return "transformers+bnb8"
    return "transformers"


def _model_quantization(model) -> str:
    if getattr(model, "is_loaded_in_4bit", False):
        return "4bit"
    if getattr(model, "is_loaded_in_8bit", False):
        return "8bit"
    return "none"


def resolve_target_modules(model, targets) -> list[str] | str:
    """PEFT understands "all-linear"; Unsloth wants names. Expand to the leaf names of every
    linear layer (bitsandbytes Linear4bit too) except the LM head."""
    if isinstance(targets, str):
        targets = [targets]
    targets = list(targets)
    if targets != ["all-linear"]:
        return targets
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for name, mod in model.named_modules():
        if mod is out_emb or name.endswith("lm_head"):
            continue
        if "Linear" in type(mod).__name__ and not any(True for _ in mod.children()):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


# ---------------------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------------------

def peak_memory() -> tuple[int, str]:
    """(bytes, kind): CUDA max allocated on a GPU, else the process's peak RSS."""
    import torch
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda_max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_peak_rss"


_TRAIN_LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "unsloth")


def _versions() -> dict:
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


def _use_text_step_bar(trainer) -> None:
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


def _make_log_callback(log_path: Path, log: dict, session: dict):
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
            # Written after the trainer finished the folder: its presence marks it complete.
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir() and state.is_world_process_zero:
                write_json(ckpt / CKPT_META, {**session["identity_record"], "global_step": state.global_step})

    return TrainingLogCallback()


# ---------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------

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


def _check_checkpoints(ckpt_dir: Path, record: dict, resume: bool) -> Path | None:
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


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------

def _trainer_class():
    # Imported late: with Unsloth, `import unsloth` must come first so its patched
    # DPOTrainer is the one subclassed here.
    from trl import DPOTrainer

    class CaiDPOTrainer(DPOTrainer):
        """TRL's DPOTrainer on pre-tokenized pairs (see the module docstring)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            missing = {"prompt_ids", "chosen_ids", "rejected_ids"} - set(dataset.column_names)
            if missing:
                raise CaiError(f"internal: dataset for {dataset_name} lacks {sorted(missing)} — build it with prepare_pairs")
            return dataset

    return CaiDPOTrainer


def _lora_config(cfg, target_modules):
    from peft import LoraConfig
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=target_modules, bias="none", task_type="CAUSAL_LM")


def _prepare_model(loaded, backend: str, cfg):
    """(model for the trainer, peft_config or None) for each backend."""
    model = loaded.model
    if hasattr(model, "peft_config"):
        raise CaiError("the model already has a LoRA adapter — pass the plain base model from models.load_base")
    targets = cfg.lora_target_modules
    if backend == "unsloth":
        import unsloth  # noqa: F401  (patches transformers/trl/peft before they run)
        from unsloth import FastLanguageModel
        model = FastLanguageModel.get_peft_model(
            model, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=resolve_target_modules(model, targets), bias="none",
            # Unsloth's own checkpointing offloads activations; only when asked for.
            use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False,
            random_state=cfg.seed,
        )
        return model, None
    if backend.startswith("transformers+bnb"):
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    target = "all-linear" if list(targets) == ["all-linear"] or targets == "all-linear" else list(targets)
    return model, _lora_config(cfg, target)


def _identity_record(loaded, cfg, pairs_sha: str) -> dict:
    return {
        "base_identity": base_identity(loaded),
        "pairs_sha256": pairs_sha,
        "trajectory": {k: getattr(cfg, k) for k in TRAJECTORY_FIELDS if hasattr(cfg, k)},
    }


def _save_adapter(trainer, adapter_dir: Path, meta: dict) -> None:
    """Write the adapter next to its final place, then swap: never a half-written adapter/.

    With several processes the save is collective (`trainer.save_model` gathers sharded
    FSDP / ZeRO-3 weights) and only the main process writes."""
    is_main, world, barrier = _dist()
    tmp = adapter_dir.with_name(f".{adapter_dir.name}.tmp")
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    if world > 1:
        barrier()
        trainer.save_model(str(tmp))
        barrier()
        if not is_main:
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


def train_dpo(loaded, pairs_path, run_dir, cfg, *, resume: bool = True, progress: bool = True,
              callbacks=()) -> dict:
    """Train a LoRA adapter with DPO on `pairs_path`; returns the run summary.

    `loaded`: a `models.Loaded` (model, tokenizer, backend, spec, resolved_path, info).
    Writes `<run>/checkpoints/`, `<run>/results/training_log.json` and `<run>/adapter/`
    (with `cai_adapter.json`: pairs sha256, base identity, training config).
    `callbacks` are extra TrainerCallbacks (tests use one to interrupt a run). After
    training the LoRA layers are removed from `loaded.model` again, so the same Loaded
    can train another adapter (the ablation does); evaluation applies the saved adapter
    with `adapters.load_adapter`.
    """
    import torch

    paths = run_paths(run_dir)
    pairs_path = Path(pairs_path)
    rows = load_pairs(pairs_path)
    pairs_sha = sha256_file(pairs_path)
    if not 0 <= cfg.warmup_ratio < 1:
        raise CaiError(f"warmup_ratio={cfg.warmup_ratio} must be in [0, 1) — fix it in the profile")
    pick_training_backend(cfg.backend, cfg.quantization)  # the requested setup must fit this machine
    quant = _model_quantization(loaded.model)
    backend = pick_training_backend(cfg.backend, quant, loaded_backend=getattr(loaded, "backend", None))
    records, counts = prepare_pairs(loaded.tokenizer, rows, cfg, source=str(pairs_path))

    is_main, world, barrier = _dist()
    record = _identity_record(loaded, cfg, pairs_sha)
    ckpt_dir = paths.checkpoints
    resume_from = _check_checkpoints(ckpt_dir, record, resume)
    if world > 1:
        barrier()  # every process has read the checkpoints before the main one may clear them
    if is_main:
        if not resume and ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_json(ckpt_dir / RUN_META, record)
    if world > 1:
        barrier()  # nobody starts (or saves a checkpoint) before the main process cleared/marked the folder

    log_path = paths.training_log
    log = {"steps": [], "sessions": []}
    if resume_from is not None and log_path.exists():
        try:
            prev = read_json(log_path)
            log["steps"], log["sessions"] = prev.get("steps", []), prev.get("sessions", [])
        except CaiError:
            pass  # a damaged log is rebuilt from the resumed step on
    session = {"index": len(log["sessions"]), "identity_record": record}
    if resume_from is not None:
        msg = f"resuming DPO training from {resume_from} (optimizer, scheduler and RNG state restored)"
    else:
        msg = "starting DPO training from scratch"
    dropped = {k[len("dropped_"):]: v for k, v in counts.items() if k.startswith("dropped_") and v}
    if is_main:
        print(f"[02_train] {msg}; backend={backend}; pairs used {counts['used']}/{counts['total']}"
              + (f" (dropped: {dropped})" if dropped else ""), flush=True)

    from datasets import Dataset
    from trl import DPOConfig

    dataset = Dataset.from_list(records)
    model, peft_config = _prepare_model(loaded, backend, cfg)
    cuda = _cuda_available()
    dtype = getattr(loaded.model, "dtype", torch.float32)
    use_bf16 = bool(cuda and (dtype == torch.bfloat16 or backend != "transformers"))
    args = DPOConfig(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps if cfg.max_steps and cfg.max_steps > 0 else -1,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio (transformers 5)
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=getattr(cfg, "save_total_limit", 2),
        seed=cfg.seed,
        data_seed=cfg.seed,
        beta=cfg.beta,
        loss_type=list(cfg.loss_type),
        loss_weights=list(cfg.loss_weights),
        max_length=cfg.max_length,
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
        gradient_checkpointing=bool(cfg.gradient_checkpointing and backend != "unsloth"),
        bf16=use_bf16,
        fp16=False,
        **reporting_args(cfg, paths.root),
        disable_tqdm=not progress,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
    )
    log_cb = _make_log_callback(log_path, log, session)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = None
    padding_side = getattr(loaded.tokenizer, "padding_side", None)  # Unsloth's trainer sets it to "right"
    t0 = time.perf_counter()
    log["sessions"].append({"index": session["index"], "resumed_from": str(resume_from) if resume_from else None,
                            "start_step": None, "backend": backend, "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    try:
        trainer = _trainer_class()(
            model=model, ref_model=None, args=args, train_dataset=dataset,
            processing_class=loaded.tokenizer, peft_config=peft_config,
            callbacks=[log_cb, *callbacks],
        )
        if not progress:
            from transformers.trainer_callback import PrinterCallback
            trainer.remove_callback(PrinterCallback)  # it prints every step's dict
        else:  # in a notebook transformers renders a table row per logged step, ProgressCallback a
            # dict per step: one plain bar of steps says the same (curves: training_log.json)
            _use_text_step_bar(trainer)
        try:
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        finally:
            sess = log["sessions"][-1]
            sess["start_step"] = session.get("start_step")
            sess["end_step"] = trainer.state.global_step
            sess["seconds"] = round(time.perf_counter() - t0, 3)
            if is_main:
                write_json(log_path, log)
        summary = _finish(trainer, result, loaded, cfg, paths, log, session, record, counts, backend,
                          resume_from, pairs_path, pairs_sha, time.perf_counter() - t0)
    finally:
        _unwrap(trainer.model if trainer is not None else model)
        if padding_side is not None:
            loaded.tokenizer.padding_side = padding_side  # generation pads on the left
    return summary


def _finish(trainer, result, loaded, cfg, paths, log, session, record, counts, backend, resume_from,
            pairs_path, pairs_sha, seconds) -> dict:
    state = trainer.state
    mem, mem_kind = peak_memory()
    last = log["steps"][-1] if log["steps"] else {}
    finished = state.global_step >= state.max_steps
    summary = {
        "backend": backend,
        "finished": finished,
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "resumed_from": str(resume_from) if resume_from else None,
        "session_start_step": session.get("start_step"),
        "pairs": counts,
        "tokens_seen": int(state.num_input_tokens_seen),
        "tokens_seen_note": "non-pad tokens of the policy's inputs: prompt+chosen and prompt+rejected sequences",
        "final": {k: last.get(k) for k in ("loss", "reward_margin", "accuracy", "rewards_chosen", "rewards_rejected")},
        "train_seconds": round(sum(s.get("seconds") or 0 for s in log["sessions"]), 3),
        "session_seconds": round(seconds, 3),
        "train_runtime_trainer": getattr(result, "metrics", {}).get("train_runtime"),
        "peak_memory_bytes": mem,
        "peak_memory_kind": mem_kind,
        "pairs_sha256": pairs_sha,
        "base_identity": record["base_identity"],
        "versions": _versions(),
        "adapter_dir": str(paths.adapter) if finished else None,
        "training_log": str(paths.training_log),
    }
    # The trainer's own per-step records (restored from the checkpoint on resume): the curves'
    # source, in the key names TRL and transformers users know ("loss", "rewards/margins" ...).
    log["log_history"] = [dict(e) for e in state.log_history]
    log["summary"] = summary
    if trainer.is_world_process_zero():
        write_json(paths.training_log, log)
    if finished:
        from .model_card import portable_base_id, run_hashes
        meta = {
            # base_model: a name valid on any machine (hub id / embedded name / folder name, never a path)
            "base_model": portable_base_id(getattr(loaded, "spec", ""), getattr(loaded, "resolved_path", None),
                                           getattr(loaded, "info", None)),
            **run_hashes(paths.root), "pairs_used": counts.get("used"),
            "pairs_sha256": pairs_sha, "pairs_path": str(pairs_path), "base_identity": record["base_identity"],
            "training_config": {k: getattr(cfg, k) for k in TRAIN_FIELDS if hasattr(cfg, k)},
            "backend": backend, "steps": state.global_step, "tokens_seen": summary["tokens_seen"],
            "versions": summary["versions"], "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        _save_adapter(trainer, paths.adapter, meta)
        if trainer.is_world_process_zero():
            print(f"[02_train] done: {state.global_step} steps, adapter in {paths.adapter}", flush=True)
    elif trainer.is_world_process_zero():
        print(f"[02_train] stopped at step {state.global_step}/{state.max_steps}; rerun to resume", flush=True)
    return summary


def _unwrap(model) -> None:
    """Take the LoRA layers back out of the base model so `loaded` is reusable."""
    try:
        if hasattr(model, "unload"):
            model.unload()  # in place: loaded.model is the object PEFT wrapped
    except Exception as exc:  # noqa: BLE001 — an unusual wrapper: keep the trained model instead
        print(f"[02_train] note: could not unload the adapter from the base model ({type(exc).__name__}); reload the base before reuse", flush=True)
