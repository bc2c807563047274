"""The run directory: where every stage reads and writes (layout in DESIGN.md)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import CaiError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def base_dir() -> Path:
    """$CAI_BASE_DIR, defaulting to the project root (RunPod users point it at /workspace)."""
    return Path(os.environ.get("CAI_BASE_DIR") or PROJECT_ROOT)


def runs_root() -> Path:
    return base_dir() / "runs"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def manifest(self) -> Path: return self.root / "manifest.json"
    @property
    def config(self) -> Path: return self.root / "config.json"
    @property
    def data(self) -> Path: return self.root / "data"
    @property
    def train_instructions(self) -> Path: return self.data / "train_instructions.jsonl"
    @property
    def eval_instructions(self) -> Path: return self.data / "eval_instructions.jsonl"
    @property
    def overlap_report(self) -> Path: return self.data / "overlap_report.json"
    @property
    def generations(self) -> Path: return self.data / "generations.jsonl"
    @property
    def preference_pairs(self) -> Path: return self.data / "preference_pairs.jsonl"
    @property
    def pair_stats(self) -> Path: return self.data / "pair_stats.json"
    @property
    def checkpoints(self) -> Path: return self.root / "checkpoints"
    @property
    def adapter(self) -> Path: return self.root / "adapter"
    @property
    def results(self) -> Path: return self.root / "results"
    @property
    def baseline(self) -> Path: return self.results / "baseline.jsonl"
    @property
    def baseline_summary(self) -> Path: return self.results / "baseline_summary.json"
    @property
    def eval_base(self) -> Path: return self.results / "eval_base.jsonl"
    @property
    def eval_trained(self) -> Path: return self.results / "eval_trained.jsonl"
    @property
    def eval_summary(self) -> Path: return self.results / "eval_summary.json"
    @property
    def stats(self) -> Path: return self.results / "stats.json"
    @property
    def gate(self) -> Path: return self.results / "gate.json"
    @property
    def training_log(self) -> Path: return self.results / "training_log.json"
    @property
    def spot_check(self) -> Path: return self.results / "spot_check.csv"


def run_paths(run_dir) -> RunPaths:
    return RunPaths(Path(run_dir))


def latest_run_dir() -> Path | None:
    root = runs_root()
    if not root.exists():
        return None
    dirs = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return dirs[-1] if dirs else None


def resolve_run_dir(run_id: str = "", create: bool = True) -> Path:
    """`run_id` "" means the newest run (or a new one when none exists)."""
    if run_id:
        p = runs_root() / run_id
    else:
        p = latest_run_dir()
        if p is None:
            if not create:
                raise CaiError(f"no run found under {runs_root()} — run `cai run` or stage 00 first")
            p = runs_root() / new_run_id()
    if create:
        p.mkdir(parents=True, exist_ok=True)
    elif not p.exists():
        raise CaiError(f"run directory {p} not found — check --run-id or run `cai run` first")
    return p
