"""environment.yml (the GPU/conda set) must list exactly pyproject's dependencies with the
`gpu` extra's pins taking precedence — a drift here breaks a paid RunPod run, not CI."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def _reqs(strings):
    return {Requirement(s).name.lower().replace("_", "-"): Requirement(s) for s in strings}


def test_environment_yml_matches_pyproject_gpu_set():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = {**_reqs(project["dependencies"]), **_reqs(project["optional-dependencies"]["gpu"])}
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
