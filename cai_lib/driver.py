"""`cai run`: execute the stage notebooks with papermill and render each to HTML.

The executed notebook is the report. The run's full config is written once to
`config.json`; notebooks read it as it is (the driver passes them only the run id and
`overwrite=True`). A stage is skipped only when it finished (`stages.finish`), its
outputs are untouched since, and its fingerprint — notebook source, the parameters it
declares, and the sha256 of every input file's *content* — matches. The manifest says,
per stage, why it was skipped or run. Stage 02 resumes from its last checkpoint by itself
when it is rerun after an interruption.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from . import manifest, stages as stage_state
from .config import RunConfig, load_profile
from .errors import CaiError
from .jsonl import read_json, sha256_file, write_json
from .model_card import refresh_model_card
from .progress import StageProgress
from .runs import PROJECT_ROOT, base_dir, check_run_id, new_run_id, run_paths, runs_root
from .stages import STAGES, Stage

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"


def reports_dir(run_id: str) -> Path:
    return base_dir() / "reports" / run_id


def fingerprint(stage: Stage, nb_path: Path, params: dict, cfg, paths) -> dict:
    """What decides a stage's results: notebook source, its parameters, its input files' content."""
    return {"notebook": sha256_file(nb_path), "params": json.loads(json.dumps(params, default=str)),
            "inputs": stage_state.hashes(stage_state.input_files(stage, cfg, paths))}


def _why_run(stage: Stage, fp: dict, prev: dict, problem: str | None) -> str | None:
    """None when the stage is up to date; else the reason it must run, in a few words."""
    if stage.always:
        return "always rerun (cheap summary of the other stages)"
    if not prev:
        return "never ran"
    if problem:
        return problem
    old = prev.get("fingerprint")
    if not isinstance(old, dict):
        return "no fingerprint recorded"
    if old.get("notebook") != fp["notebook"]:
        return "notebook changed"
    changed = sorted(k for k in set(fp["params"]) | set(old.get("params", {}))
                     if fp["params"].get(k) != old.get("params", {}).get(k))
    if changed:
        return "parameters changed: " + ", ".join(changed)
    changed = sorted(k for k in set(fp["inputs"]) | set(old.get("inputs", {}))
                     if fp["inputs"].get(k) != old.get("inputs", {}).get(k))
    if changed:
        return "inputs changed: " + ", ".join(changed)
    return None


def _render_html(executed: Path) -> Path:
    """The report a reader opens: outputs and text only. Code, prompts and stderr (library
    warnings, progress-bar frames) stay in the executed notebook next to it."""
    import nbformat
    from nbconvert import HTMLExporter
    nb = nbformat.read(str(executed), as_version=4)
    for cell in nb.cells:
        if cell.get("cell_type") == "code":
            cell.outputs = [o for o in cell.get("outputs", [])
                            if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    out = executed.with_suffix(".html")
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(out)
    return out


def _select(stages: str | None) -> list[Stage]:
    present = [s for s in STAGES if (NOTEBOOK_DIR / f"{s.notebook}.ipynb").exists()]
    if stages is None or stages == "":
        return present
    wanted = [x.strip() for x in stages.split(",")]
    known = {s.key: s for s in present}
    if not any(wanted) or any(not w for w in wanted):
        raise CaiError(f"--stages {stages!r}: name stages separated by commas, e.g. --stages 00,01 "
                       f"(choose from {sorted(known)}), or leave it out for all")
    bad = [w for w in wanted if w not in known]
    if bad:
        raise CaiError(f"--stages: unknown stage {bad[0]!r} — choose from {sorted(known)}")
    if len(set(wanted)) != len(wanted):
        raise CaiError(f"--stages {stages!r}: a stage is named twice — name each once")
    return [known[k] for k in sorted(wanted)]  # always in pipeline order


def _config_for(profile: str | None, overrides: dict, paths) -> tuple[RunConfig, str]:
    """The run's config: an explicit profile, else the existing run's config.json, else cpu-quick;
    `--set` overrides on top. Validated in full before anything is written or loaded."""
    if profile is None and paths.config.exists():
        values = read_json(paths.config)
        source = f"{paths.config} (the run's own config)"
        label = (manifest.load(paths.root).get("run") or {}).get("profile") or "(the run's config.json)"
    else:
        label = profile or "cpu-quick"
        values = load_profile(label)
        source = f"profile {label}"
    if overrides:
        source += " with --set"
    return RunConfig.from_mapping({**values, **overrides}, source=source), label


def _safe_update_stage(run_dir, key: str, **fields) -> None:
    """Record a stage's failure even when the disk is full: one line instead of a second traceback."""
    try:
        manifest.update_stage(run_dir, key, **fields)
    except (OSError, CaiError) as exc:
        print(f"  (could not record stage {key} as {fields.get('status')} in the manifest: {exc})", flush=True)


def _stage_error(stage: Stage, exc, executed: Path) -> CaiError:
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = str(getattr(exc, "evalue", exc)).strip().splitlines()
    first = evalue[0] if evalue else ""
    if ename == "CaiError":
        return CaiError(f"stage {stage.key} ({stage.notebook}): {first}")
    return CaiError(f"stage {stage.key} ({stage.notebook}) failed: {ename}: {first} — "
                    f"full traceback in {executed}; fix and rerun the same command to resume")


def _gpu_gib() -> float | None:
    """Memory of this process's GPU in GiB, or None without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30


def run_preflight(cfg: RunConfig, gpu_gib: float | None) -> list[str]:
    """Each stage's estimated peak memory and time on this card (cai_lib.preflight), printed;
    a stage that will not fit is one CaiError naming the stage, the estimate and the key to change."""
    from . import preflight
    from .models import resolve_spec
    folder, _, _ = resolve_spec(cfg.model)
    lines = preflight.summary_lines(preflight.read_model_config(folder), cfg.to_dict(), gpu_gib)
    print(f"pre-flight on {gpu_gib:.0f} GiB (estimates: cai_lib/preflight.py):")
    for line in lines:
        print(f"  {line}")
    refused = [ln for ln in lines if ": REFUSE" in ln]
    if refused:
        raise CaiError(f"pre-flight: {refused[0]} — change the profile, or pass --no-preflight to run anyway")
    return lines


def compile_cache_dir() -> Path:
    """Where torch keeps compiled decoding graphs for every stage of every run: next to the runs."""
    return base_dir() / "cache" / "torch-compile"


def use_compile_cache() -> None:
    """Point torch's on-disk compile caches (inductor's graphs, Triton's kernels) at
    compile_cache_dir() for the stage kernels this process starts, unless already set.

    Each stage is its own kernel and compiles the static cache's decoding step again; with the
    caches warm that took 15.4 + 5.5 s instead of 52.9 + 26.0 s cold (H200, Gemma 3 270M shape,
    batch 64 then 1; benchmarks/results/decoding_h200/compilebk_inductor_*.json). torch's default
    location is /tmp, which a rented pod loses on restart; $CAI_BASE_DIR is the volume that
    keeps the runs, so only the first run on a volume compiles cold."""
    root = compile_cache_dir()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))


def run_pipeline(profile: str | None = None, run_id: str = "", stages: str | None = None, strict: bool = False,
                 overrides: dict | None = None, preflight: str = "auto", gpu_gib: float | None = None) -> int:
    """`preflight`: "auto" checks memory before the stages when a GPU is present (or --gpu-gib
    is given), "only" checks and stops, "off" skips the check."""

    # Batch runs write progress bars into the report: a few lines, not hundreds, and no
    # widget warning (the HTML is static, widgets would not render anyway).
    os.environ.setdefault("TQDM_MININTERVAL", "30")
    os.environ.setdefault("PYTHONWARNINGS", "ignore:IProgress not found")
    use_compile_cache()
    # Validate everything before anything is written: run id, stages, profile, overrides.
    run_id = check_run_id(run_id) if run_id else new_run_id()
    selected = _select(stages)
    run_dir = runs_root() / run_id
    paths = run_paths(run_dir)
    cfg, label = _config_for(profile, overrides or {}, paths)
    if preflight != "off":
        gib = gpu_gib or _gpu_gib()
        if gib is None and preflight == "only":
            raise CaiError("--preflight: no CUDA GPU here — pass --gpu-gib N for the card you will rent (e.g. 80)")
        if gib is not None:
            run_preflight(cfg, gib)
        if preflight == "only":
            return 0
    previous = read_json(paths.config) if paths.config.exists() else None
    import papermill as pm  # only now: a bad profile is refused without paying for its import

    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(paths.config, cfg.to_dict())
    out_dir = reports_dir(run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest.snapshot(run_dir, cfg.to_dict())
    manifest.update(run_dir, run={"run_id": run_id, "profile": label, "run_dir": str(run_dir),
                                  "reports": str(out_dir)})
    print(f"cai run: profile {label}, run {run_id}\n  run directory: {run_dir}\n  reports: {out_dir}")
    if previous is not None:
        changed = sorted(k for k, v in cfg.to_dict().items() if previous.get(k, v) != v)
        if changed:
            print(f"  config changed since this run last ran: {', '.join(changed)} (stages using them rerun)")

    for stage in selected:
        nb_path = NOTEBOOK_DIR / f"{stage.notebook}.ipynb"
        params = stage_state.stage_params(stage, cfg)  # the RunConfig fields its notebook declares
        fp = fingerprint(stage, nb_path, params, cfg, paths)
        prev = manifest.load(run_dir).get("stages", {}).get(stage.key, {})
        why = _why_run(stage, fp, prev, stage_state.problem(run_dir, stage.key, cfg) if prev else None)
        if why is None:
            manifest.update_stage(run_dir, stage.key, decision="skipped: up to date")
            print(f"  stage {stage.key} {stage.notebook}: up to date, skipped")
            continue
        executed = out_dir / f"{stage.notebook}.ipynb"
        print(f"  stage {stage.key} {stage.notebook}: running ({why}) …", flush=True)
        t0 = time.time()
        manifest.update_stage(run_dir, stage.key, status="running", started=t0, decision=f"run: {why}",
                              outputs=None)
        progress = StageProgress(f"stage {stage.key} {stage.notebook}")  # its own progress, one line
        try:
            pm.execute_notebook(str(nb_path), str(executed), parameters={"run_id": run_id, "overwrite": True},
                                kernel_name="python3", cwd=str(NOTEBOOK_DIR), progress_bar=False,
                                # CAI_NOTEBOOK_LOG=1 streams all cell output (debugging a stage)
                                log_output=os.environ.get("CAI_NOTEBOOK_LOG") == "1", stderr_file=progress)
        except Exception as exc:  # papermill wraps the kernel's exception
            progress.close()
            _safe_update_stage(run_dir, stage.key, status="failed", seconds=round(time.time() - t0, 1))
            if executed.exists():
                try:
                    _render_html(executed)
                except Exception:  # the HTML of a failed stage is a courtesy, not a requirement
                    pass
            raise _stage_error(stage, exc, executed) from None
        progress.close()
        html = _render_html(executed)
        seconds = round(time.time() - t0, 1)
        status = manifest.load(run_dir).get("stages", {}).get(stage.key, {}).get("status")
        if status != "done":
            _safe_update_stage(run_dir, stage.key, seconds=seconds, report=str(html))
            if status == "dry_run":
                print(f"  stage {stage.key} {stage.notebook}: dry run, nothing written (not marked done) → {html}")
                continue
            raise CaiError(f"stage {stage.key} ({stage.notebook}) ended without recording itself as finished "
                           f"(status {status!r}) — see {html}")
        manifest.update_stage(run_dir, stage.key, fingerprint=fp, seconds=seconds, report=str(html))
        print(f"  stage {stage.key} {stage.notebook}: done in {seconds:.0f} s → {html}", flush=True)

    manifest.update(run_dir, files=manifest.file_hashes(run_dir))
    verdict = None
    if paths.gate.exists() and stage_state.problem(run_dir, "04", cfg) is None:
        gate = read_json(paths.gate)
        verdict = gate.get("verdict")
        print(f"gate verdict: {verdict}")
        for reason in gate.get("reasons", []):
            print(f"  - {reason}")
        refresh_model_card(run_dir)  # the adapter's README.md gets the verdict and its figures
    elif paths.gate.exists():
        print(f"gate: not current (stage 04 {stage_state.problem(run_dir, '04', cfg)}) — run --stages 04")
    print(f"report: {out_dir}")
    if strict and verdict != "PASS":
        return 3
    return 0
