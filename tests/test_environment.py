"""The install on a rented GPU, checked without a GPU: environment.yml, constraints-gpu.txt and
pyproject.toml agree; constraints-gpu.txt is the set the H100 runs used; the make targets run
the commands the README promises; the driver check refuses a driver too old for the wheel.
A drift here breaks a paid RunPod run, not CI."""

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import check_gpu_env  # noqa: E402


def _reqs(strings):
    return {Requirement(s).name.lower().replace("_", "-"): Requirement(s) for s in strings}


def test_environment_yml_matches_pyproject_gpu_set():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    expected = {**_reqs(project["dependencies"]), **_reqs(extras["gpu"]), **_reqs(extras["dev"])}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    got = _reqs(pip_section)
    assert set(got) == set(expected), f"missing {set(expected) - set(got)}, extra {set(got) - set(expected)}"
    for name, req in expected.items():
        assert got[name].specifier == req.specifier, f"{name}: {got[name].specifier} != {req.specifier}"


def test_gpu_extra_respects_unsloth_caps():
    """Unsloth 2026.10.x: transformers <= 5.17, trl <= 1.15, datasets < 5."""
    gpu = _reqs(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"])
    assert "5.18.0" not in gpu["transformers"].specifier and "5.17.0" in gpu["transformers"].specifier
    assert "1.16.0" not in gpu["trl"].specifier and "1.15.0" in gpu["trl"].specifier
    assert "5.0.0" not in gpu["datasets"].specifier and "4.8.5" in gpu["datasets"].specifier


def test_cpu_constraints_pin_a_transformers_that_converts_gemma_right():
    pins = {}
    for line in (ROOT / "constraints-cpu.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            k, v = line.split("==", 1)
            pins[k.strip().lower()] = v.strip()
    major, minor = (int(x) for x in pins["transformers"].split(".")[:2])
    assert (major, minor) >= (5, 24), "the CPU set converts the embedded GGUF: needs transformers >= 5.24"
    assert pins["torch"] == "2.13.0"


# ---- constraints-gpu.txt: the exact set of the H100 runs ------------------------------------

def _gpu_pins() -> dict[str, str]:
    return {canonicalize_name(k): v for k, v in check_gpu_env.read_constraints(ROOT / "constraints-gpu.txt")[0].items()}


def _manifest():
    return json.loads((ROOT / "reports" / "gpu-small-h100" / "manifest.json").read_text())


def test_environment_yml_has_the_notebook_and_test_tools():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    names = set(_reqs(next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))))
    assert {"jupyterlab", "pytest", "ipykernel", "papermill"} <= names
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python == "python=" + ".".join(_manifest()["versions"]["python"].split(".")[:2])


def test_gpu_constraints_pin_every_declared_package_within_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pins = _gpu_pins()
    problems = []
    for s in project["dependencies"] + extras["gpu"] + extras["dev"]:
        req = Requirement(s)
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{name}: not pinned in constraints-gpu.txt")
        elif Version(pins[name]) not in req.specifier:
            problems.append(f"{name}=={pins[name]} is outside pyproject's {req}")
    assert not problems, "\n".join(problems)


def test_gpu_constraints_are_the_versions_the_h100_run_used():
    pins = _gpu_pins()
    ran = {canonicalize_name(k): v for k, v in _manifest()["versions"].items() if k != "python"}
    assert ran["torch"] == "2.11.0" and ran["transformers"] == "5.17.0"
    assert {k: pins.get(k) for k in ran} == ran
    for line in (ROOT / "scripts" / "device" / "wheels.txt").read_text().splitlines():
        m = re.match(r"^g\d\s+([\w.\-]+)==(\S+)$", line)
        if m:
            assert pins.get(canonicalize_name(m.group(1))) == m.group(2), f"{m.group(1)}: wheels.txt {m.group(2)}"


def test_gpu_constraints_meet_what_the_carried_wheels_require():
    """Every requirement unsloth, trl, datasets, bitsandbytes declare holds for the pins —
    including datasets' fsspec cap, which the H100 image broke (pip would refuse it)."""
    import test_gpu_versions as g
    pins = _gpu_pins()
    declared = {**g.wheel_requires(), **g.wheel_requires(ROOT / "tests" / "fixtures" / "gpu_resolved_requires.txt")}
    assert {"torchvision-0.26.0", "xformers-0.0.35", "diffusers-0.42.1"} <= set(declared)
    for name in ("torchvision", "xformers", "diffusers"):
        assert any(k == f"{name}-{pins[name]}" for k in declared), f"{name}=={pins[name]} has no declared requirements"
    problems = [f"{wheel} requires {r}; constraints pin {pins[canonicalize_name(r.name)]}"
                for wheel, reqs in declared.items() for r in reqs
                if canonicalize_name(r.name) in pins and Version(pins[canonicalize_name(r.name)]) not in r.specifier]
    assert not problems, "\n".join(problems)


def test_cuda_wheel_line_is_the_h100_runs_torch_cuda():
    _, cuda = check_gpu_env.read_constraints(ROOT / "constraints-gpu.txt")
    assert cuda == _manifest()["hardware"]["cuda_version"] == "13.0"


# ---- the driver check (scripts/check_gpu_env.py) --------------------------------------------

SMI = "| NVIDIA-SMI 580.159.04   Driver Version: 580.159.04   CUDA Version: {} |"
PINS = {"torch": "2.11.0"}


def test_driver_check_accepts_a_driver_for_the_wheel_and_refuses_an_older_one():
    ok, line = check_gpu_env.check(SMI.format("13.0"), pins=PINS, wheel_cuda="13.0")
    assert ok and "13.0" in line
    ok, line = check_gpu_env.check(SMI.format("13.2"), pins=PINS, wheel_cuda="13.0")
    assert ok  # minor-version compatibility within CUDA 13
    ok, line = check_gpu_env.check(SMI.format("12.4"), pins=PINS, wheel_cuda="13.0")
    assert not ok and "CUDA 13.0" in line and "12.4" in line and "TORCH_INDEX_URL" in line and "\n" not in line
    ok, line = check_gpu_env.check("", pins=PINS, wheel_cuda="13.0")
    assert not ok and "driver" in line


def test_driver_check_with_a_cuda_12_index():
    ok, _ = check_gpu_env.check(SMI.format("12.4"), pins=PINS, wheel_cuda="13.0",
                                torch_index_url="https://example.invalid/whl/cu126")
    assert ok
    ok, line = check_gpu_env.check(SMI.format("11.8"), pins=PINS, wheel_cuda="13.0",
                                   torch_index_url="https://example.invalid/whl/cu126")
    assert not ok and "12.6" in line
    ok, line = check_gpu_env.check(SMI.format("12.4"), pins=PINS, wheel_cuda="13.0", torch_index_url="https://x/simple")
    assert not ok and "cuXYZ" in line


def test_system_torch_is_reused_only_when_it_is_the_pinned_release():
    smi = SMI.format("12.8")
    ok, line = check_gpu_env.check(smi, pins=PINS, wheel_cuda="13.0", use_system_torch=True, system=("2.11.0+cu128", "12.8"))
    assert ok and "reusing" in line
    ok, line = check_gpu_env.check(smi, pins=PINS, wheel_cuda="13.0", use_system_torch=True, system=("2.4.1+cu124", "12.4"))
    assert not ok and "2.4.1" in line and "2.11.0" in line
    ok, line = check_gpu_env.check(smi, pins=PINS, wheel_cuda="13.0", use_system_torch=True, system=("2.11.0", None))
    assert not ok and "CPU build" in line
    ok, line = check_gpu_env.check(smi, pins=PINS, wheel_cuda="13.0", use_system_torch=True, system=None)
    assert not ok and "no importable torch" in line
    ok, line = check_gpu_env.check(smi, pins=PINS, wheel_cuda="13.0", use_system_torch=True, system=("2.11.0+cu130", "13.0"))
    assert not ok and "CUDA 13.0" in line


def test_index_cuda_reads_the_url_suffix():
    assert check_gpu_env.index_cuda("https://example.invalid/whl/cu126") == "12.6"
    assert check_gpu_env.index_cuda("https://example.invalid/whl/cu130/") == "13.0"
    assert check_gpu_env.index_cuda("https://example.invalid/simple") is None


# ---- the make targets' commands (make -n) ---------------------------------------------------

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _make_n(tmp_path, *args) -> list[str]:
    # under `make test` (CI) MAKELEVEL/MAKEFLAGS make a nested make print "Entering directory"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    out = subprocess.run(["make", "-n", "-B", "--no-print-directory", *args, f"VENV={tmp_path}/v"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@needs_make
def test_make_setup_cpu_path_is_unchanged(tmp_path):
    lines = _make_n(tmp_path, "setup", "CUDA=0")
    pip = [x for x in lines if " pip install " in x and "--upgrade pip" not in x]
    assert pip[0].endswith("pip install -q torch==2.13.0")
    assert pip[1].endswith("pip install -q -c constraints-cpu.txt -e '.[dev]'")
    assert len(pip) == 2 and not any("gpu" in x for x in pip)


@needs_make
def test_make_setup_gpu_path_checks_the_driver_then_installs_the_pinned_set(tmp_path):
    lines = _make_n(tmp_path, "setup", "CUDA=1")
    assert "scripts/check_gpu_env.py" in lines[0] and "--system-torch" not in lines[0]
    pip = [x for x in lines if " pip install " in x and "--upgrade pip" not in x]
    assert pip == [f"{tmp_path}/v/bin/python -m pip install -q -c constraints-gpu.txt -e '.[dev,gpu]'"]
    assert any(f"-m venv {tmp_path}/v" in x and "--system-site-packages" not in x for x in lines)
    assert any("torch.cuda.is_available()" in x for x in lines)


@needs_make
def test_make_setup_use_system_torch_and_torch_index(tmp_path):
    lines = _make_n(tmp_path, "setup", "CUDA=1", "USE_SYSTEM_TORCH=1")
    assert "--system-torch" in lines[0]
    assert any(f"-m venv --system-site-packages {tmp_path}/v" in x for x in lines)
    lines = _make_n(tmp_path, "setup", "CUDA=1", "TORCH_INDEX_URL=https://example.invalid/whl/cu126")
    assert "--torch-index-url https://example.invalid/whl/cu126" in lines[0]
    pip = [x for x in lines if " pip install " in x and "--upgrade pip" not in x]
    assert pip[0].endswith("-c constraints-gpu.txt torch --index-url https://example.invalid/whl/cu126")
    assert pip[1].endswith("-c constraints-gpu.txt -e '.[dev,gpu]'")


@needs_make
def test_make_embedded_model_converts_with_the_cpu_set_in_a_side_env(tmp_path):
    lines = _make_n(tmp_path, "embedded-model")
    assert lines[0] == "test -x .venv-embed/bin/python || python3 -m venv .venv-embed"
    pip = [x for x in lines if " pip install " in x and "--upgrade pip" not in x]
    assert pip and all(x.startswith(".venv-embed/bin/python") and "-c constraints-cpu.txt" in x for x in pip)
    assert any(" transformers " in x for x in pip)
    assert lines[-1].endswith(".venv-embed/bin/python -m cai_lib.embedded")


@needs_make
def test_make_setup_on_a_too_old_driver_stops_with_one_line_before_installing(tmp_path):
    """The real recipe, with a fake nvidia-smi whose driver supports CUDA 12.4 only."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text(f"#!/bin/sh\necho '{SMI.format('12.4')}'\n")
    (fake / "nvidia-smi").chmod(0o755)
    env = {**{k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")},
           "PATH": f"{fake}:{os.environ['PATH']}"}
    out = subprocess.run(["make", "setup", f"VENV={tmp_path}/v", f"PYTHON={sys.executable}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    errors = [x for x in out.stderr.splitlines() if x.startswith("check_gpu_env: error:")]
    assert len(errors) == 1 and "CUDA 13.0" in errors[0] and "12.4" in errors[0]
    assert not (tmp_path / "v").exists()  # nothing created, nothing downloaded


def test_driver_check_on_the_lent_h200s_own_readings():
    """nvidia-smi's header and the image's torch as captured on the H200 (2026-12-03)."""
    smi = "| NVIDIA-SMI 580.159.04             Driver Version: 580.159.04     CUDA Version: 13.0     |"
    pins, cuda = check_gpu_env.read_constraints(ROOT / "constraints-gpu.txt")
    assert check_gpu_env.check(smi, pins=pins, wheel_cuda=cuda)[0]
    ok, line = check_gpu_env.check(smi, pins=pins, wheel_cuda=cuda, use_system_torch=True,
                                   system=("2.11.0+cu130", "13.0"))
    assert ok and "reusing the system torch 2.11.0+cu130" in line
