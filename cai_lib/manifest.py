"""manifest.json: what a reader needs to trust or reproduce a run.

Every parameter and seed, library versions, git commit, hardware, sha256 of every file the
run wrote, per-stage timings and peak memory. Each stage merges its own section; writes
are atomic so an interrupted stage never corrupts what earlier stages recorded.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from .jsonl import read_json, sha256_file, write_json
from .runs import PROJECT_ROOT, run_paths

LIBRARIES = ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes",
             "unsloth", "unsloth_zoo", "gguf", "scipy", "numpy", "papermill", "nbconvert"]


def library_versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def git_info() -> dict:
    def _git(*args):
        try:
            return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    sha = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no")) if sha else None
    return {"commit": sha or None, "dirty": dirty}


def hardware() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import psutil
        info["ram_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        import torch
        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpus"] = [
                {"name": torch.cuda.get_device_name(i),
                 "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
                for i in range(torch.cuda.device_count())
            ]
            info["cuda_version"] = torch.version.cuda
    except ImportError:
        info["cuda"] = False
    return info


def memory_now() -> dict:
    """Current and peak memory of this process: GPU memory on CUDA, RSS always."""
    out = {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    try:
        import psutil
        out["rss_gib"] = round(psutil.Process().memory_info().rss / 2**30, 3)
    except ImportError:
        pass
    try:
        import torch
        if torch.cuda.is_available():
            out["gpu_allocated_gib"] = round(torch.cuda.memory_allocated() / 2**30, 3)
            out["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    except ImportError:
        pass
    return out


def file_hashes(run_dir) -> dict:
    """sha256 of every file the run wrote (checkpoints excluded: large and transient)."""
    root = Path(run_dir)
    out = {}
    for sub in ("data", "results", "adapter"):
        for p in sorted((root / sub).rglob("*")) if (root / sub).exists() else []:
            if p.is_file() and not p.name.startswith("."):
                out[str(p.relative_to(root))] = sha256_file(p)
    return out


def load(run_dir) -> dict:
    path = run_paths(run_dir).manifest
    return read_json(path) if path.exists() else {}


def update(run_dir, **sections) -> dict:
    """Merge top-level sections (dicts are merged one level deep) and write atomically."""
    m = load(run_dir)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(m.get(key), dict):
            m[key].update(value)
        else:
            m[key] = value
    m["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(run_paths(run_dir).manifest, m)
    return m


def update_stage(run_dir, stage: str, **fields) -> dict:
    """Merge `fields` into stages[stage] (keeping what the stage recorded before) and write."""
    m = load(run_dir)
    stages = m.get("stages") if isinstance(m.get("stages"), dict) else {}
    return update(run_dir, stages={stage: {**stages.get(stage, {}), **fields}})


def snapshot(run_dir, config: dict) -> dict:
    """The environment part of the manifest (written by `cai run` and by stage 04)."""
    return update(run_dir, config=config, seeds={"seed": config.get("seed")}, versions=library_versions(),
                  git=git_info(), hardware=hardware(), files=file_hashes(run_dir))


def stage1_adapter(run_dir, *, allow_unapproved: bool = False) -> Path:
    """The run's adapter as a Stage-1 model for later work — only if the gate said PASS.

    Stage 04 marks the adapter approved in the manifest only on PASS; using any other
    adapter downstream must be a visible decision (`allow_unapproved=True`).
    """
    from .errors import CaiError
    paths = run_paths(run_dir)
    approval = load(run_dir).get("approval") or {}
    if not (paths.adapter / "adapter_config.json").exists():
        raise CaiError(f"{paths.adapter}: no adapter — run stage 02 for this run first")
    if not approval.get("adapter_approved") and not allow_unapproved:
        verdict = approval.get("verdict", "no verdict yet: run stage 04")
        raise CaiError(f"{paths.manifest}: adapter not approved as a Stage-1 model (gate: {verdict}) — "
                       "pass allow_unapproved=True to use it anyway")
    return paths.adapter
