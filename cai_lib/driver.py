"""`cai run`: execute the stage notebooks with papermill and render each to HTML.

The executed notebook is the report. A stage is skipped when its outputs exist and its
fingerprint (notebook source, parameters, and the sha256 of its input files) matches the
one recorded when those outputs were made; stage 02 resumes from its last checkpoint by
itself when it is rerun after an interruption.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import manifest
from .config import RunConfig, load_profile
from .errors import CaiError
from .jsonl import read_json, sha256_file, write_json
from .runs import PROJECT_ROOT, base_dir, new_run_id, run_paths, runs_root

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"


@dataclass(frozen=True)
class Stage:
    key: str
    notebook: str
    inputs: tuple  # RunPaths attribute names whose files this stage reads
    outputs: tuple  # RunPaths attribute names (files) this stage must leave behind
    always: bool = False  # cheap stages that summarise others are always rerun


STAGES = [
    Stage("00", "00_baseline", (), ("baseline",)),
    Stage("01", "01_generate", (), ("train_instructions", "eval_instructions", "overlap_report", "preference_pairs")),
    Stage("02", "02_train", ("preference_pairs",), ("training_log", "adapter")),
    Stage("03", "03_evaluate", ("eval_instructions", "train_instructions", "overlap_report", "adapter"),
          ("eval_base", "eval_trained")),
    Stage("04", "04_report", ("baseline", "eval_base", "eval_trained", "training_log"), ("stats", "gate"), always=True),
]


def notebook_parameters(nb_path: Path) -> dict:
    """The parameters a notebook declares (its `parameters` cell), via papermill."""
    import papermill as pm
    return pm.inspect_notebook(str(nb_path))


def reports_dir(run_id: str) -> Path:
    return base_dir() / "reports" / run_id


def _hash_path(p: Path) -> str:
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(str(f.relative_to(p)).encode())
            h.update(sha256_file(f).encode())
        return h.hexdigest()
    return sha256_file(p) if p.exists() else "missing"


def fingerprint(stage: Stage, nb_path: Path, params: dict, paths) -> str:
    h = hashlib.sha256()
    h.update(sha256_file(nb_path).encode())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    for name in stage.inputs:
        h.update(f"{name}:{_hash_path(getattr(paths, name))}".encode())
    return h.hexdigest()


def _outputs_present(stage: Stage, paths) -> bool:
    for name in stage.outputs:
        p = getattr(paths, name)
        if not p.exists() or (p.is_dir() and not any(p.iterdir())):
            return False
    return True


def _render_html(executed: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter
    nb = nbformat.read(str(executed), as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    out = executed.with_suffix(".html")
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(out)
    return out


def _select(stages: str) -> list[Stage]:
    present = [s for s in STAGES if (NOTEBOOK_DIR / f"{s.notebook}.ipynb").exists()]
    if not stages:
        return present
    wanted = [x.strip() for x in stages.split(",") if x.strip()]
    known = {s.key: s for s in present}
    bad = [w for w in wanted if w not in known]
    if bad:
        raise CaiError(f"--stages: unknown stage {bad[0]!r} — choose from {sorted(known)}")
    return [known[w] for w in wanted]


def _stage_error(stage: Stage, exc, executed: Path) -> CaiError:
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = str(getattr(exc, "evalue", exc)).strip().splitlines()
    first = evalue[0] if evalue else ""
    if ename == "CaiError":
        return CaiError(f"stage {stage.key} ({stage.notebook}): {first}")
    return CaiError(f"stage {stage.key} ({stage.notebook}) failed: {ename}: {first} — "
                    f"full traceback in {executed}; fix and rerun the same command to resume")


def run_pipeline(profile: str = "cpu-quick", run_id: str = "", stages: str = "", strict: bool = False) -> int:
    import os

    import papermill as pm

    # Batch runs write progress bars into the report: a few lines, not hundreds, and no
    # widget warning (the HTML is static, widgets would not render anyway).
    os.environ.setdefault("TQDM_MININTERVAL", "30")
    os.environ.setdefault("PYTHONWARNINGS", "ignore:IProgress not found")
    values = load_profile(profile)
    cfg = RunConfig.from_mapping(values, source=f"profile {profile}")
    selected = _select(stages)  # validate everything before anything is written
    run_id = run_id or new_run_id()
    run_dir = runs_root() / run_id
    paths = run_paths(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(paths.config, cfg.to_dict())
    out_dir = reports_dir(run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest.snapshot(run_dir, cfg.to_dict())
    manifest.update(run_dir, run={"run_id": run_id, "profile": profile, "run_dir": str(run_dir),
                                  "reports": str(out_dir)})
    print(f"cai run: profile {profile}, run {run_id}\n  run directory: {run_dir}\n  reports: {out_dir}")

    record = manifest.load(run_dir).get("stages", {})
    for stage in selected:
        nb_path = NOTEBOOK_DIR / f"{stage.notebook}.ipynb"
        declared = notebook_parameters(nb_path)
        params = {k: v for k, v in cfg.to_dict().items() if k in declared}
        params["run_id"] = run_id
        fp = fingerprint(stage, nb_path, params, paths)
        prev = record.get(stage.key, {})
        if not stage.always and prev.get("fingerprint") == fp and prev.get("status") == "done" \
                and _outputs_present(stage, paths):
            print(f"  stage {stage.key} {stage.notebook}: up to date, skipped")
            continue
        executed = out_dir / f"{stage.notebook}.ipynb"
        print(f"  stage {stage.key} {stage.notebook}: running …", flush=True)
        t0 = time.time()
        manifest.update_stage(run_dir, stage.key, status="running", started=time.time())
        try:
            pm.execute_notebook(str(nb_path), str(executed), parameters=params, kernel_name="python3",
                                cwd=str(NOTEBOOK_DIR), progress_bar=False,
                                # CAI_NOTEBOOK_LOG=1 streams cell output (progress bars) to this console:
                                # the only view into a long stage on a remote machine
                                log_output=os.environ.get("CAI_NOTEBOOK_LOG") == "1")
        except Exception as exc:  # papermill wraps the kernel's exception
            manifest.update_stage(run_dir, stage.key, status="failed", seconds=round(time.time() - t0, 1))
            if executed.exists():
                try:
                    _render_html(executed)
                except Exception:  # the HTML of a failed stage is a courtesy, not a requirement
                    pass
            raise _stage_error(stage, exc, executed) from None
        html = _render_html(executed)
        seconds = round(time.time() - t0, 1)
        if not _outputs_present(stage, paths):
            missing = [n for n in stage.outputs if not getattr(paths, n).exists()]
            raise CaiError(f"stage {stage.key} ({stage.notebook}) finished but did not write {missing} — see {html}")
        manifest.update_stage(run_dir, stage.key, status="done", fingerprint=fp, seconds=seconds, report=str(html))
        print(f"  stage {stage.key} {stage.notebook}: done in {seconds:.0f} s → {html}", flush=True)

    manifest.update(run_dir, files=manifest.file_hashes(run_dir))
    verdict = None
    if paths.gate.exists():
        gate = read_json(paths.gate)
        verdict = gate.get("verdict")
        print(f"gate verdict: {verdict}")
        for reason in gate.get("reasons", []):
            print(f"  - {reason}")
    print(f"report: {out_dir}")
    if strict and verdict != "PASS":
        return 3
    return 0
