"""The five stages' records: what each reads and writes, and whether its results can be trusted.

A stage's manifest record is the only evidence that its files are its own finished work:
`begin` marks it running (and refuses when a stage it depends on is not finished, or was
changed since), `finish` marks it done with the sha256 of what it read and wrote.
Anything else — a stage killed half-way, an evaluation file rewritten by hand or by
another command, a predecessor re-run with other settings — leaves a record that does
not match the files, and the next stage refuses with one line saying what to rerun.

`cai run` (driver) decides from the same records whether a stage is up to date; a
notebook opened in JupyterLab goes through `begin` too, so it cannot silently rewrite
a finished stage: it says so and asks for `overwrite = True`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import manifest
from ..errors import CaiError
from ..jsonl import sha256_file
from ..runs import run_paths


@dataclass(frozen=True)
class Stage:
    key: str
    notebook: str
    inputs: tuple  # RunPaths attribute names this stage reads (their content is fingerprinted)
    outputs: tuple  # RunPaths attribute names this stage must leave behind
    after: tuple = ()  # stages that must be finished, with untouched outputs, before this one
    always: bool = False  # cheap stages that summarise others are always rerun by `cai run`


STAGES = [
    Stage("00", "00_baseline", (), ("baseline", "baseline_summary")),
    Stage("01", "01_generate", (), ("train_instructions", "eval_instructions", "overlap_report",
                                    "preference_pairs", "pair_stats")),
    Stage("02", "02_train", ("preference_pairs",), ("training_log", "adapter"), after=("01",)),
    Stage("03", "03_evaluate", ("eval_instructions", "train_instructions", "overlap_report", "adapter"),
          ("eval_base", "eval_fewshot", "eval_trained", "eval_summary"), after=("01", "02")),
    Stage("04", "04_report", ("eval_base", "eval_fewshot", "eval_trained", "eval_summary", "overlap_report", "training_log"),
          ("stats", "gate"), after=("02", "03"), always=True),
]
BY_KEY = {s.key: s for s in STAGES}


def stage(key: str) -> Stage:
    if key not in BY_KEY:
        raise CaiError(f"unknown stage {key!r} — choose from {sorted(BY_KEY)}")
    return BY_KEY[key]


def hash_path(p: Path) -> str:
    """sha256 of a file, or of a folder's file names and contents; "missing" if absent."""
    p = Path(p)
    if p.is_dir():
        h = hashlib.sha256()
        # An adapter's model card (README.md) is documentation that stage 04 rewrites with the
        # verdict (cai_lib/model_card.py): it must not make stage 02's output look changed.
        card = p / "README.md" if (p / "cai_adapter.json").is_file() else None
        for f in sorted(x for x in p.rglob("*") if x.is_file() and x != card):
            h.update(str(f.relative_to(p)).encode())
            h.update(sha256_file(f).encode())
        return h.hexdigest()
    return sha256_file(p) if p.exists() else "missing"


def input_files(st: Stage, cfg, paths) -> dict:
    """Every file whose content decides this stage's results (beyond code and parameters)."""
    files = {name: getattr(paths, name) for name in st.inputs}
    if st.key == "00":  # the baseline item file: editing it must rerun stage 00
        from ..items import starter_items_path
        files["baseline_items"] = Path(cfg.baseline_items) if cfg.baseline_items else starter_items_path()
    return files


def hashes(files: dict) -> dict:
    return {name: hash_path(p) for name, p in files.items()}


def output_hashes(st: Stage, paths) -> dict:
    return hashes({name: getattr(paths, name) for name in st.outputs})


def stage_params(st: Stage, cfg, declared=None) -> dict:
    """The config values a stage depends on: the RunConfig fields its notebook declares."""
    values = cfg.to_dict()
    if declared is None:
        declared = notebook_parameter_names(st)
    return {k: values[k] for k in sorted(declared) if k in values}


def notebook_parameter_names(st: Stage) -> set:
    from ..runs import PROJECT_ROOT
    import papermill as pm
    return set(pm.inspect_notebook(str(PROJECT_ROOT / "notebooks" / f"{st.notebook}.ipynb")))


def record(run_dir, key: str) -> dict:
    rec = manifest.load(run_dir).get("stages", {}).get(key, {})
    return rec if isinstance(rec, dict) else {}


def problem(run_dir, key: str, cfg=None) -> str | None:
    """Why stage `key`'s outputs cannot be trusted as finished work, or None if they can."""
    st = stage(key)
    rec = record(run_dir, key)
    status = rec.get("status")
    if status is None:
        return "has not run"
    if status != "done":
        return f"did not finish (status {status!r}{': interrupted?' if status == 'running' else ''})"
    recorded = rec.get("outputs")
    if not isinstance(recorded, dict):
        return "has no record of its outputs (finished by an older version)"
    now = output_hashes(st, run_paths(run_dir))
    changed = sorted(n for n in st.outputs if now.get(n) != recorded.get(n))
    if changed:
        return f"outputs changed since it finished ({', '.join(changed)})"
    if cfg is not None and isinstance(rec.get("params"), dict):
        current = cfg.to_dict()
        differ = sorted(k for k, v in rec["params"].items() if k in current and current[k] != v)
        if differ:
            k = differ[0]
            return (f"ran with other settings ({k}={rec['params'][k]!r}, now {current[k]!r}"
                    f"{f' and {len(differ) - 1} more' if len(differ) > 1 else ''})")
    return None


def begin(run_dir, key: str, cfg, *, overwrite: bool = False, read_only_ok: bool = False) -> bool:
    """Start stage `key` for this run. Returns True when the stage may write its outputs.

    Refuses (one line) when a stage it depends on is not finished for this config. When
    the stage itself already finished and `overwrite` is False: returns False if
    `read_only_ok` (the notebook then shows results without writing), else refuses.
    """
    st = stage(key)
    run_dir = Path(run_dir)
    run_id = run_dir.name
    for dep in st.after:
        why = problem(run_dir, dep, cfg)
        if why:
            keys = ",".join(k for k in BY_KEY if dep <= k <= key)
            raise CaiError(f"stage {key} needs stage {dep} finished for this run, but stage {dep} {why} — "
                           f"rerun: cai run --run-id {run_id} --stages {keys}")
    if not overwrite and record(run_dir, key).get("status") == "done":
        why = problem(run_dir, key, cfg)
        if read_only_ok and why is None:
            print(f"stage {key} already finished for run {run_id}: showing its results without rewriting them "
                  "(set overwrite = True to redo it)")
            return False
        detail = f" (and {why})" if why else ""
        raise CaiError(f"stage {key} already finished for run {run_id}{detail} — its report is "
                       f"reports/{run_id}/{st.notebook}.html; set overwrite = True in the parameters cell "
                       f"to redo it, or start a new run")
    manifest.update_stage(run_dir, key, status="running", started=time.time(), outputs=None,
                          params=stage_params(st, cfg))
    return True


def finish(run_dir, key: str, cfg, *, status: str = "done", **info) -> dict:
    """Record stage `key` as finished: what it read and wrote (sha256), its settings and facts."""
    st = stage(key)
    paths = run_paths(run_dir)
    if status == "done":
        missing = [n for n in st.outputs if not getattr(paths, n).exists()]
        if missing:
            raise CaiError(f"stage {key} ({st.notebook}) finished but did not write {missing}")
    info.setdefault("memory", manifest.memory_now())
    # The stage's own facts first; the trust fields last, so a fact named like one cannot replace it.
    return manifest.update_stage(run_dir, key, **{
        **info, "status": status, "finished_at": time.time(), "params": stage_params(st, cfg),
        "inputs": hashes(input_files(st, cfg, paths)),
        "outputs": output_hashes(st, paths) if status == "done" else None})


@dataclass
class StageResult:
    """What a stage entry returns: `written` is False when a finished stage was shown
    without rewriting it (stage 04 on a finished run); `record` holds the facts recorded
    in the manifest; `data` what the notebook displays (records, summaries, the loaded
    model ...), also reachable as result["name"]."""
    key: str
    written: bool
    record: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.data[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.data.get(name, default)

