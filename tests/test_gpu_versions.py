"""The GPU version set, checked on CPU against what the carried wheels declare.

Unsloth pins transformers, trl and datasets tightly; a `gpu` extra wider than its pins lets pip
pick a version Unsloth refuses (or silently mis-patches). The declared requirements are read
from the wheels' METADATA, copied into tests/fixtures/gpu_wheel_requires.txt (no network at
test time). The second check replays the set that ran on the H100 (benchmarks/results/
device_env.txt + scripts/device/wheels.txt) against the same declarations.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "gpu_wheel_requires.txt"
# The GPU machine: CPython 3.12 on Linux x86_64.
ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}


def wheel_requires(fixture: Path = FIXTURE) -> dict[str, list[Requirement]]:
    out: dict[str, list[Requirement]] = {}
    cur = None
    for line in fixture.read_text().splitlines():
        if line.startswith("["):
            cur = line.strip("[]")
            out[cur] = []
        elif line.startswith("Requires-Dist:") and cur:
            r = Requirement(line.split(":", 1)[1].strip())
            if r.marker is None or r.marker.evaluate(ENV):
                out[cur].append(r)
    return out


def project_specs() -> dict[str, SpecifierSet]:
    """Combined specifier per package over `dependencies` + the `gpu` extra."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = list(data["project"]["dependencies"]) + list(data["project"]["optional-dependencies"]["gpu"])
    specs: dict[str, SpecifierSet] = {}
    for s in reqs:
        r = Requirement(s)
        n = canonicalize_name(r.name)
        specs[n] = specs.get(n, SpecifierSet()) & r.specifier
    return specs


def _probe_versions(*specsets: SpecifierSet) -> list[Version]:
    """Versions at and next to every boundary named in the specifiers: where a wider range shows."""
    out = set()
    for ss in specsets:
        for sp in ss:
            v = Version(sp.version.replace(".*", ""))
            rel = list(v.release) + [0] * (3 - len(v.release))
            a, b, c = rel[:3]
            for t in [(a, b, c), (a, b, c + 1), (a, b + 1, 0), (a + 1, 0, 0), (a, b, 99),
                      (a, b, max(c - 1, 0)), (a, max(b - 1, 0), 0), (a, b, 0), (a, b, 1)]:
                out.add(Version(".".join(map(str, t))))
            out.add(v)
    return sorted(out)


def wider_than(ours: SpecifierSet, theirs: SpecifierSet) -> list[str]:
    """Probe versions that `ours` allows and `theirs` refuses (empty: ours is within theirs)."""
    return [str(v) for v in _probe_versions(ours, theirs) if v in ours and v not in theirs]


def test_probe_finds_a_wider_range_and_accepts_a_narrower_one():
    assert wider_than(SpecifierSet(">=5.17,<=5.17.99"), SpecifierSet("<=5.17.0,>=4.52.4"))
    assert wider_than(SpecifierSet(">=4.0,<5"), SpecifierSet("!=4.0.*,!=4.1.0,<5.0.0,>=3.4.1"))
    assert not wider_than(SpecifierSet("==5.17.0"), SpecifierSet("<=5.17.0,>=4.52.4"))
    assert not wider_than(SpecifierSet(">=4.7,<5"), SpecifierSet("!=4.0.*,!=4.1.0,!=4.4.*,!=4.5.0,<5.0.0,>=3.4.1"))


def test_fixture_holds_the_carried_wheels():
    req = wheel_requires()
    pinned = {}
    for line in (ROOT / "scripts" / "device" / "wheels.txt").read_text().splitlines():
        m = re.match(r"^g\d\s+([\w.\-]+)==(\S+)$", line)
        if m:
            pinned[canonicalize_name(m.group(1))] = m.group(2)
    for key in req:
        name, ver = key.rsplit("-", 1)
        assert pinned.get(canonicalize_name(name)) == ver, f"{key} in the fixture but wheels.txt pins {pinned.get(canonicalize_name(name))}"
    assert {"unsloth-2026.10.9", "unsloth_zoo-2026.10.9", "trl-1.15.0"} <= set(req)


def test_gpu_extra_is_within_what_the_gpu_wheels_accept():
    ours = project_specs()
    problems = []
    for wheel, reqs in wheel_requires().items():
        if not wheel.startswith(("unsloth", "trl")):
            continue  # bitsandbytes/datasets wheels only constrain what the device image holds
        for r in reqs:
            n = canonicalize_name(r.name)
            if n in ours:
                bad = wider_than(ours[n], r.specifier)
                if bad:
                    problems.append(f"{n}{ours[n]} allows {', '.join(bad)} but {wheel} requires {r}")
    assert not problems, "\n".join(problems)


def test_pinned_gpu_packages_are_the_carried_versions():
    """The extra's exact pins (unsloth, unsloth_zoo) are the versions the benchmarks ran."""
    ours = project_specs()
    for name, ver in [("unsloth", "2026.10.9"), ("unsloth-zoo", "2026.10.9")]:
        assert name in ours and Version(ver) in ours[name], f"{name} {ver} not allowed by pyproject ({ours.get(name)})"


def device_versions() -> dict[str, str]:
    """Versions on the H100 run: the image's pip list (device_env.txt) + the carried wheels."""
    vers = {}
    for line in (ROOT / "benchmarks" / "results" / "device_env.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)\s+(\d[\w.+]*)$", line.strip())
        if m:
            vers[canonicalize_name(m.group(1))] = m.group(2).split("+")[0]
    for line in (ROOT / "scripts" / "device" / "wheels.txt").read_text().splitlines():
        m = re.match(r"^g\d\s+([\w.\-]+)==(\S+)$", line)
        if m:
            vers[canonicalize_name(m.group(1))] = m.group(2)
    return vers


# The one declared requirement the working H100 set breaks, and why that is tolerated: datasets
# caps fsspec for its remote-filesystem code, which the package never uses (local JSONL only).
TOLERATED = {("datasets-4.8.5", "fsspec")}


def test_device_set_meets_the_declared_requirements():
    vers = device_versions()
    assert vers.get("transformers") == "5.17.0" and vers.get("torch", "").startswith("2.11")
    problems = []
    for wheel, reqs in wheel_requires().items():
        for r in reqs:
            n = canonicalize_name(r.name)
            if n in vers and Version(vers[n]) not in r.specifier and (wheel, n) not in TOLERATED:
                problems.append(f"{wheel} requires {r}; the device run had {n} {vers[n]}")
    assert not problems, "\n".join(problems)
    # The tolerated conflict is real (so the exception is still needed).
    ds = next(r for r in wheel_requires()["datasets-4.8.5"] if canonicalize_name(r.name) == "fsspec")
    assert Version(vers["fsspec"]) not in ds.specifier
