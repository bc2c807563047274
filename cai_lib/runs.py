"""The run directory: where every stage reads and writes (layout in DESIGN.md)."""

from __future__ import annotations

import os
import re
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
    def eval_fewshot(self) -> Path: return self.results / "eval_base_fewshot.jsonl"
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


RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_run_id(run_id: str) -> str:
    """A run id is a plain folder name inside the runs folder, nothing that can leave it."""
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id) or run_id in {".", ".."} or ".." in run_id:
        raise CaiError(f"run id {run_id!r}: use a plain name of letters, digits, '-', '_' and '.' "
                       "(not a path, not '.' or '..'), e.g. --run-id my-run-1")
    return run_id


def run_dir_for(run_id: str) -> Path:
    """The run folder of `run_id`, always inside $CAI_BASE_DIR/runs."""
    return runs_root() / check_run_id(run_id)


def has_completed_stage(run_dir: Path) -> bool:
    """True when the run's manifest records at least one stage as done."""
    import json
    try:
        stages = json.loads((Path(run_dir) / "manifest.json").read_text()).get("stages", {})
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(stages, dict) and any(isinstance(v, dict) and v.get("status") == "done"
                                            for v in stages.values())


def latest_run_dir() -> Path | None:
    """The newest run that finished at least one stage (an empty or failed-at-once run is
    not "the run" a freshly opened notebook should continue)."""
    root = runs_root()
    if not root.exists():
        return None
    dirs = sorted((p for p in root.iterdir() if p.is_dir() and has_completed_stage(p)),
                  key=lambda p: p.stat().st_mtime)
    return dirs[-1] if dirs else None


def resolve_run_dir(run_id: str = "", create: bool = True) -> Path:
    """`run_id` "" (or None) means the newest run with a completed stage (or a new one when
    none exists and `create`)."""
    if run_id:
        p = run_dir_for(run_id)
    else:
        p = latest_run_dir()
        if p is None:
            if not create:
                raise CaiError(f"no run with a completed stage under {runs_root()} — run `cai run` first")
            p = runs_root() / new_run_id()
    if create:
        p.mkdir(parents=True, exist_ok=True)
    elif not p.exists():
        raise CaiError(f"run directory {p} not found — check --run-id or run `cai run` first")
    return p
