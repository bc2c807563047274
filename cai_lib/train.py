"""Stage 02: DPO with a LoRA adapter (TRL `DPOTrainer` + PEFT), resumable and measured.

The pieces: `pair_tokens` (pairs -> token ids; the tokenisation contract and why this
package tokenizes instead of TRL), `checkpoints` (identity, resume checks, atomic adapter
save), `train_log` (per-step log, curves, memory, versions, metric sinks); this module
builds the trainer and runs it.

Backends: "unsloth" (CUDA: Unsloth FastLanguageModel 4-bit QLoRA, adapter via
`FastLanguageModel.get_peft_model`), "transformers+bnb4"/"transformers+bnb8" (CUDA:
bitsandbytes base, `prepare_model_for_kbit_training`, adapter via TRL's `peft_config`),
"transformers" (CPU fp32, CUDA bf16) — chosen by `models.pick_backend`, the one backend
decision for loading and training. The reference model is always the policy itself
with the adapter off: one copy of the base weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoints import TRAIN_FIELDS, identity_record, prepare_checkpoints, save_adapter
from .distributed import init_distributed
from .errors import CaiError
from .jsonl import sha256_file, write_json
from .models import cuda_available, pick_backend
from .pair_tokens import load_pairs, prepare_pairs
from .runs import run_paths
from .train_log import make_log_callback, peak_memory, previous_log, reporting_args, training_versions, use_text_step_bar


# ---------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------

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
# trainer
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


@dataclass
class TrainSession:
    """One call of `train_dpo`: what the summary and the adapter's record are made from."""
    loaded: Any
    cfg: Any
    paths: Any
    pairs_path: Path
    pairs_sha: str
    backend: str
    record: dict
    counts: dict
    resume_from: Path | None
    log: dict  # results/training_log.json as written: steps, sessions, log_history, summary
    session: dict
    summary: dict | None = None  # set when the trainer returns (train_dpo's result)


def train_dpo(loaded, pairs_path, run_dir, cfg, *, resume: bool = True, progress: bool = True,
              callbacks=()) -> dict:
    """Train a LoRA adapter with DPO on `pairs_path`; returns the run summary (`run_dpo`'s)."""
    return run_dpo(loaded, pairs_path, run_dir, cfg, resume=resume, progress=progress, callbacks=callbacks).summary


def run_dpo(loaded, pairs_path, run_dir, cfg, *, resume: bool = True, progress: bool = True,
            callbacks=()) -> TrainSession:
    """Train a LoRA adapter with DPO on `pairs_path`; returns the session: its summary and
    the training log it wrote (stage 02 shows both without reading them back).

    `loaded`: a `models.Loaded` (model, tokenizer, backend, spec, resolved_path, info).
    Writes `<run>/checkpoints/`, `<run>/results/training_log.json` and `<run>/adapter/`
    (with `cai_adapter.json`: pairs sha256, base identity, training config).
    `callbacks` are extra TrainerCallbacks (tests use one to interrupt a run). After
    training the LoRA layers are removed from `loaded.model` again, so the same Loaded
    can train another adapter (the ablation does); evaluation applies the saved adapter
    with `adapters.load_adapter`.
    """
    paths = run_paths(run_dir)
    pairs_path = Path(pairs_path)
    rows = load_pairs(pairs_path)
    pairs_sha = sha256_file(pairs_path)
    if not 0 <= cfg.warmup_ratio < 1:
        raise CaiError(f"warmup_ratio={cfg.warmup_ratio} must be in [0, 1) — fix it in the profile")
    info = init_distributed()
    loaded_backend = getattr(loaded, "backend", None)
    # The requested setup must fit this machine; then the model in hand decides (a folder
    # saved quantized loads quantized whatever `quantization` says).
    pick_backend(cfg.backend, "train", cfg.quantization, info.world, loaded_backend=loaded_backend)
    backend = pick_backend(cfg.backend, "train", _model_quantization(loaded.model), info.world,
                           loaded_backend=loaded_backend)
    records, counts = prepare_pairs(loaded.tokenizer, rows, cfg, source=str(pairs_path))

    is_main = info.is_main
    record = identity_record(loaded, cfg, pairs_sha)
    resume_from = prepare_checkpoints(paths.checkpoints, record, resume)
    log = previous_log(paths.training_log, resume_from is not None)
    run = TrainSession(loaded=loaded, cfg=cfg, paths=paths, pairs_path=pairs_path, pairs_sha=pairs_sha,
                       backend=backend, record=record, counts=counts, resume_from=resume_from, log=log,
                       session={"index": len(log["sessions"]), "identity_record": record})
    if is_main:
        _announce(run)
    run.summary = _run_trainer(run, records, progress=progress, callbacks=callbacks, is_main=is_main)
    return run


def _announce(run: TrainSession) -> None:
    if run.resume_from is not None:
        msg = f"resuming DPO training from {run.resume_from} (optimizer, scheduler and RNG state restored)"
    else:
        msg = "starting DPO training from scratch"
    counts = run.counts
    dropped = {k[len("dropped_"):]: v for k, v in counts.items() if k.startswith("dropped_") and v}
    print(f"[02_train] {msg}; backend={run.backend}; pairs used {counts['used']}/{counts['total']}"
          + (f" (dropped: {dropped})" if dropped else ""), flush=True)


def _dpo_config(run: TrainSession, *, cuda: bool, progress: bool):
    import torch
    from trl import DPOConfig

    cfg, backend = run.cfg, run.backend
    dtype = getattr(run.loaded.model, "dtype", torch.float32)
    use_bf16 = bool(cuda and (dtype == torch.bfloat16 or backend != "transformers"))
    return DPOConfig(
        output_dir=str(run.paths.checkpoints),
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
        precompute_ref_batch_size=cfg.ref_batch_size or None,  # None: TRL's default, the training batch
        gradient_checkpointing=bool(cfg.gradient_checkpointing and backend != "unsloth"),
        bf16=use_bf16,
        fp16=False,
        **reporting_args(cfg, run.paths.root),
        disable_tqdm=not progress,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
    )


def _run_trainer(run: TrainSession, records: list[dict], *, progress: bool, callbacks, is_main: bool) -> dict:
    import torch
    from datasets import Dataset

    loaded, log = run.loaded, run.log
    dataset = Dataset.from_list(records)
    model, peft_config = _prepare_model(loaded, run.backend, run.cfg)
    cuda = cuda_available()
    args = _dpo_config(run, cuda=cuda, progress=progress)
    log_cb = make_log_callback(run.paths.training_log, log, run.session)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = None
    padding_side = getattr(loaded.tokenizer, "padding_side", None)  # Unsloth's trainer sets it to "right"
    t0 = time.perf_counter()
    log["sessions"].append({"index": run.session["index"], "resumed_from": str(run.resume_from) if run.resume_from else None,
                            "start_step": None, "backend": run.backend, "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
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
            use_text_step_bar(trainer)
        try:
            result = trainer.train(resume_from_checkpoint=str(run.resume_from) if run.resume_from else None)
        finally:
            sess = log["sessions"][-1]
            sess["start_step"] = run.session.get("start_step")
            sess["end_step"] = trainer.state.global_step
            sess["seconds"] = round(time.perf_counter() - t0, 3)
            if is_main:
                write_json(run.paths.training_log, log)
        summary = _finish(run, trainer, result, time.perf_counter() - t0)
    finally:
        _unwrap(trainer.model if trainer is not None else model)
        if padding_side is not None:
            loaded.tokenizer.padding_side = padding_side  # generation pads on the left
    return summary


def _summary(run: TrainSession, trainer, result, seconds: float) -> dict:
    state, log = trainer.state, run.log
    mem, mem_kind = peak_memory()
    last = log["steps"][-1] if log["steps"] else {}
    finished = state.global_step >= state.max_steps
    return {
        "backend": run.backend,
        "finished": finished,
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "resumed_from": str(run.resume_from) if run.resume_from else None,
        "session_start_step": run.session.get("start_step"),
        "pairs": run.counts,
        "tokens_seen": int(state.num_input_tokens_seen),
        "tokens_seen_note": "non-pad tokens of the policy's inputs: prompt+chosen and prompt+rejected sequences",
        "final": {k: last.get(k) for k in ("loss", "reward_margin", "accuracy", "rewards_chosen", "rewards_rejected")},
        "train_seconds": round(sum(s.get("seconds") or 0 for s in log["sessions"]), 3),
        "session_seconds": round(seconds, 3),
        "train_runtime_trainer": getattr(result, "metrics", {}).get("train_runtime"),
        "peak_memory_bytes": mem,
        "peak_memory_kind": mem_kind,
        "pairs_sha256": run.pairs_sha,
        "base_identity": run.record["base_identity"],
        "versions": training_versions(),
        "adapter_dir": str(run.paths.adapter) if finished else None,
        "training_log": str(run.paths.training_log),
    }


def _adapter_meta(run: TrainSession, summary: dict) -> dict:
    """cai_adapter.json: where the adapter came from (pairs, base, settings, versions)."""
    from .model_card import portable_base_id, run_hashes
    loaded, cfg = run.loaded, run.cfg
    return {
        # base_model: a name valid on any machine (hub id / embedded name / folder name, never a path)
        "base_model": portable_base_id(getattr(loaded, "spec", ""), getattr(loaded, "resolved_path", None),
                                       getattr(loaded, "info", None)),
        **run_hashes(run.paths.root), "pairs_used": run.counts.get("used"),
        "pairs_sha256": run.pairs_sha, "pairs_path": str(run.pairs_path), "base_identity": run.record["base_identity"],
        "training_config": {k: getattr(cfg, k) for k in TRAIN_FIELDS if hasattr(cfg, k)},
        "backend": run.backend, "steps": summary["steps"], "tokens_seen": summary["tokens_seen"],
        "versions": summary["versions"], "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _finish(run: TrainSession, trainer, result, seconds: float) -> dict:
    """Summary into the training log; the adapter saved when training reached its last step."""
    state = trainer.state
    summary = _summary(run, trainer, result, seconds)
    # The trainer's own per-step records (restored from the checkpoint on resume): the curves'
    # source, in the key names TRL and transformers users know ("loss", "rewards/margins" ...).
    run.log["log_history"] = [dict(e) for e in state.log_history]
    run.log["summary"] = summary
    if trainer.is_world_process_zero():
        write_json(run.paths.training_log, run.log)
    if summary["finished"]:
        save_adapter(trainer, run.paths.adapter, _adapter_meta(run, summary))
        if trainer.is_world_process_zero():
            print(f"[02_train] done: {state.global_step} steps, adapter in {run.paths.adapter}", flush=True)
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
