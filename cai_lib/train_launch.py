"""Stage 02 across several processes (GPUs), through Hugging Face accelerate.

    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 4 \\
        -m cai_lib.train_launch --run-dir runs/<run_id>

(`cai train --run RUN_DIR --accelerate-config FILE` builds this command.) Every process
runs the same code: load the base model, call `train.train_dpo` with the run's
`config.json` — the single-device path, unchanged — and the HF Trainer inside TRL's
DPOTrainer wraps the model in DDP / FSDP / DeepSpeed according to the accelerate config.
The reference model stays the adapter-disabled policy (TRL unwraps the model and toggles
the adapter), so there is still one copy of the base weights per process.

Batch size across processes. On one device an optimizer step sees
`per_device_batch_size × gradient_accumulation_steps` pairs. With N processes the
default (`--batch-mode keep-global`) keeps that global batch: it divides
`gradient_accumulation_steps` (else `per_device_batch_size`) by N, so the run takes the
same number of steps over the same pairs in the same order as the single-device run —
accelerate deals batch k to process k mod N, which are exactly the micro-batches one
device would accumulate — and only finishes sooner. `--batch-mode per-device` keeps the
profile's per-device values instead (global batch × N, N times fewer steps).

Each process hashes its LoRA weights when training ends; the main process writes them to
`results/train_launch.json` and the run fails if they differ (DDP keeps replicas in step;
a mismatch would mean the processes trained different adapters). Under FSDP and ZeRO-3 a
process holds only a shard, so no per-process hash is taken there.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from .errors import CaiError

BATCH_MODES = ("keep-global", "per-device")


def adapt_batch(cfg, world: int, mode: str = "keep-global"):
    """A copy of `cfg` whose per-process batch settings give the intended global batch."""

    if mode not in BATCH_MODES:
        raise CaiError(f"--batch-mode {mode!r} is not one of {list(BATCH_MODES)}")
    if world <= 1 or mode == "per-device":
        return cfg
    ga, bs = int(cfg.gradient_accumulation_steps), int(cfg.per_device_batch_size)
    if ga % world == 0:
        return dataclasses.replace(cfg, gradient_accumulation_steps=ga // world)
    if bs % world == 0:
        return dataclasses.replace(cfg, per_device_batch_size=bs // world)
    raise CaiError(
        f"cannot keep the global batch ({bs} per device × {ga} accumulation = {bs * ga}) over {world} processes: "
        f"neither gradient_accumulation_steps={ga} nor per_device_batch_size={bs} divides by {world} — set one of "
        "them to a multiple of the process count in the profile, or pass --batch-mode per-device (global batch × processes)")


def distributed_backend(cfg, world: int):
    """The run configuration for `world` processes. The decision is `models.pick_backend`'s:
    Unsloth's open-source build trains on one GPU only, so auto means transformers and an
    explicit unsloth is refused; the loader it names replaces `backend`, so every process
    loads the base model the same way."""

    if world <= 1:
        return cfg
    from .models import loader_of, pick_backend
    return dataclasses.replace(cfg, backend=loader_of(pick_backend(cfg.backend, "train", cfg.quantization, world)))


def lora_fingerprint(named_tensors) -> str:
    """sha256 over the LoRA tensors, by name (PEFT's '.default' adapter name removed, so
    the in-memory model and the saved adapter file give the same hash)."""
    import torch

    h = hashlib.sha256()
    items = sorted((n.replace(".default", ""), t) for n, t in named_tensors if "lora_" in n)
    if not items:
        raise CaiError("no LoRA weights found to fingerprint — was the adapter attached?")
    for name, t in items:
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def saved_adapter_fingerprint(adapter_dir) -> str:
    from safetensors.torch import load_file

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.exists():
        raise CaiError(f"{path}: not found — the adapter was not saved")
    return lora_fingerprint(load_file(str(path)).items())


def _sharded_params() -> bool:
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    return PartialState().distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def _hash_callback(store: dict):
    from transformers import TrainerCallback

    class LoraHash(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kw):
            store["step"] = state.global_step
            if model is None or _sharded_params():
                store["lora_sha256"] = None
                return
            store["lora_sha256"] = lora_fingerprint(model.named_parameters())

    return LoraHash()


def launch_command(run_dir, *, accelerate_config=None, num_processes: int | None = None,
                   main_process_port: int | None = None, extra: tuple = ()) -> list[str]:
    """The `accelerate launch` command that runs this module for `run_dir`.

    accelerate is invoked as `python -m accelerate.commands.launch` with this interpreter,
    so the launched processes use the same environment as `cai`. Without a config file a
    plain multi-process launch is used (DDP; gloo on a CPU-only host)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        cfg = Path(accelerate_config)
        if not cfg.is_file():
            raise CaiError(f"{cfg}: accelerate config not found — use one of configs/accelerate/*.yaml or `accelerate config --config_file FILE`")
        cmd += ["--config_file", str(cfg)]
    else:
        cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if num_processes is not None:
        if num_processes < 1:
            raise CaiError(f"--num-processes must be >= 1, got {num_processes}")
        cmd += ["--num_processes", str(num_processes)]
    if main_process_port is not None:
        cmd += ["--main_process_port", str(main_process_port)]
    cmd += ["-m", "cai_lib.train_launch", "--run-dir", str(run_dir), *extra]
    return cmd


_KEEP_ALIVE: list = []


def _zero3_init_before_load(paths) -> None:
    """DeepSpeed ZeRO-3: a 70B model must be created already partitioned, or every process
    first builds all of it in CPU memory. transformers partitions at load time when a
    DeepSpeed config is registered (a weak reference) before `from_pretrained`; creating
    TrainingArguments under `accelerate launch` with DeepSpeed registers accelerate's
    plugin, so do that now and keep the object alive. (Unverified here: no GPUs and no
    deepspeed package in the CPU set.)"""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "") not in ("3", ""):
        return
    from transformers import TrainingArguments
    _KEEP_ALIVE.append(TrainingArguments(output_dir=str(paths.checkpoints), report_to="none"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cai_lib.train_launch",
                                description="Run stage 02 (DPO) for a run directory; launch with `accelerate launch` for several processes.")
    p.add_argument("--run-dir", required=True, help="run directory holding config.json and data/preference_pairs.jsonl")
    p.add_argument("--pairs", default=None, help="pairs file (default: <run>/data/preference_pairs.jsonl)")
    p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints and start over")
    p.add_argument("--batch-mode", default="keep-global", choices=BATCH_MODES,
                   help="keep-global (default): same global batch and steps as one device; per-device: profile values per process")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a RunConfig field (VALUE parsed as JSON when it parses, else a string)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for kv in pairs:
        if "=" not in kv:
            raise CaiError(f"--set {kv!r}: expected KEY=VALUE")
        k, v = kv.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def run(argv=None) -> dict:
    from .config import RunConfig, resolve
    from .distributed import all_gather_object, barrier, init_distributed
    from .jsonl import write_json
    from .runs import run_paths

    args = build_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    paths = run_paths(run_dir)
    if not paths.config.exists():
        raise CaiError(f"{paths.config}: not found — pass a run directory made by `cai run` (stage 01 writes the pairs)")
    overrides = _overrides(args.set)
    unknown = sorted(set(overrides) - RunConfig.field_names())
    if unknown:
        raise CaiError(f"--set {unknown[0]}: not a RunConfig field (see cai_lib/config.py)")
    info = init_distributed()  # before the model loads: it picks this process's GPU
    cfg = resolve(run_dir, overrides)
    requested = {"per_device_batch_size": cfg.per_device_batch_size,
                 "gradient_accumulation_steps": cfg.gradient_accumulation_steps, "backend": cfg.backend}
    cfg = distributed_backend(adapt_batch(cfg, info.world, args.batch_mode), info.world)
    if info.world > 1 and cfg.precompute_ref_log_probs:
        # Seen on 2 CPU processes (TRL 1.16, datasets 5.2): the precomputed column is cached
        # in one process's temporary datasets folder and the other process fails to open it
        # (FileNotFoundError …/hf_datasets-*/cache-*.arrow). Compute the reference pass each
        # step instead — same loss, slower steps — until that is fixed upstream or here.
        if info.is_main:
            print("[train_launch] precompute_ref_log_probs is off with several processes "
                  "(datasets temp-cache race); the reference pass runs every step", flush=True)
        cfg = dataclasses.replace(cfg, precompute_ref_log_probs=False)
    pairs = Path(args.pairs) if args.pairs else paths.preference_pairs

    from .models import load_configured
    from .train import train_dpo

    _zero3_init_before_load(paths)

    if info.is_main:
        print(f"[train_launch] {info.world} process(es); per-device batch {cfg.per_device_batch_size} × "
              f"accumulation {cfg.gradient_accumulation_steps} × {info.world} = global batch "
              f"{cfg.per_device_batch_size * cfg.gradient_accumulation_steps * info.world}", flush=True)
    loaded = load_configured(cfg, purpose="train")
    store: dict = {}
    t0 = time.perf_counter()
    summary = train_dpo(loaded, pairs, run_dir, cfg, resume=not args.fresh,
                        progress=info.is_main and not args.no_progress, callbacks=[_hash_callback(store)])
    seconds = time.perf_counter() - t0
    per_rank = all_gather_object({"rank": info.rank, "lora_sha256": store.get("lora_sha256"),
                                  "step": store.get("step"), "seconds": round(seconds, 3),
                                  "peak_memory_bytes": summary.get("peak_memory_bytes"),
                                  "peak_memory_kind": summary.get("peak_memory_kind")})
    hashes = {r["lora_sha256"] for r in per_rank}
    synced = None if None in hashes else len(hashes) == 1
    record = {
        "world_size": info.world, "batch_mode": args.batch_mode, "requested": requested,
        "per_device_batch_size": cfg.per_device_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "global_batch": cfg.per_device_batch_size * cfg.gradient_accumulation_steps * info.world,
        "backend": summary.get("backend"), "steps": summary.get("steps"), "finished": summary.get("finished"),
        "adapters_synchronized": synced, "per_rank": per_rank,
    }
    if info.is_main:
        if summary.get("finished") and synced is not None:
            record["saved_adapter_sha256"] = saved_adapter_fingerprint(paths.adapter)
            record["saved_matches_ranks"] = record["saved_adapter_sha256"] in hashes
        write_json(paths.results / "train_launch.json", record)
    barrier()
    if synced is False:
        raise CaiError(f"processes ended with different LoRA weights ({len(hashes)} distinct hashes, see "
                       f"{paths.results / 'train_launch.json'}) — the processes did not train one model; check the accelerate config")
    return {**summary, "distributed": record}


def main(argv=None) -> int:
    try:
        run(argv)
    except CaiError as exc:
        print(f"cai train: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
