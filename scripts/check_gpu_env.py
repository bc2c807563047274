"""Before `make setup` installs the GPU set: will its torch run on this machine's driver?

Standard library only (it runs before the virtual environment exists). Prints one line and
exits 0 when the install can work, 1 with the reason and the fix when it cannot:

    python3 scripts/check_gpu_env.py                      # the PyPI torch wheel of constraints-gpu.txt
    python3 scripts/check_gpu_env.py --system-torch       # the pod's preinstalled torch (USE_SYSTEM_TORCH=1)
    python3 scripts/check_gpu_env.py --torch-index-url URL  # a PyTorch wheel index ending in /cuXYZ

The rule is CUDA's minor-version compatibility: a wheel built for CUDA X.Y runs on a driver
whose "CUDA Version" (nvidia-smi's header) has the same major X or a higher one. A torch
whose major is above the driver's fails at the first CUDA call, after a multi-GB download.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints-gpu.txt"


def read_constraints(path: Path = CONSTRAINTS) -> tuple[dict[str, str], str | None]:
    """({package: pinned version}, the torch wheel's CUDA from the `# cuda-wheel:` line)."""
    pins: dict[str, str] = {}
    cuda = None
    for line in path.read_text().splitlines():
        m = re.match(r"#\s*cuda-wheel:\s*(\d+\.\d+)", line)
        if m:
            cuda = m.group(1)
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
    return pins, cuda


def driver_cuda(smi_output: str) -> str | None:
    """The highest CUDA version the driver supports, from nvidia-smi's header."""
    m = re.search(r"CUDA Version:\s*(\d+\.\d+)", smi_output)
    return m.group(1) if m else None


def _major_minor(v: str) -> tuple[int, int]:
    major, minor = v.split(".")[:2]
    return int(major), int(minor)


def cuda_compatible(driver: str, wheel: str) -> bool:
    return _major_minor(driver)[0] >= _major_minor(wheel)[0]


def index_cuda(url: str) -> str | None:
    """cu126 -> 12.6, cu130 -> 13.0 from a wheel index URL's last path part."""
    m = re.search(r"cu(\d+)(\d)/?$", url.strip())
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _same_release(installed: str, pinned: str) -> bool:
    """2.11.0+cu128 satisfies ==2.11.0 (pip ignores the local label the same way)."""
    return installed.split("+", 1)[0] == pinned


def system_torch(python: str) -> tuple[str, str | None] | None:
    """(version, torch.version.cuda) of the torch that `python` imports, or None."""
    code = "import torch,sys; sys.stdout.write(torch.__version__ + ' ' + str(torch.version.cuda))"
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    version, cuda = out.stdout.split()
    return version, (None if cuda == "None" else cuda)


def check(smi_output: str, *, pins: dict[str, str], wheel_cuda: str | None, use_system_torch: bool = False,
          system: tuple[str, str | None] | None = None, torch_index_url: str = "") -> tuple[bool, str]:
    """(ok, one line) — pure, so tests feed it nvidia-smi texts and torch versions."""
    want = pins.get("torch")
    driver = driver_cuda(smi_output)
    if driver is None:
        return False, ("nvidia-smi shows no 'CUDA Version' — the NVIDIA driver is missing or broken; use a GPU "
                       "image with a working driver (nvidia-smi must list the GPU)")
    if use_system_torch:
        if system is None:
            return False, ("USE_SYSTEM_TORCH=1 but the system python has no importable torch — drop "
                           "USE_SYSTEM_TORCH to install torch " + str(want) + " into .venv")
        version, cuda = system
        if not _same_release(version, want):
            return False, (f"USE_SYSTEM_TORCH=1 but the system torch is {version}, not {want} (constraints-gpu.txt) "
                           f"— drop USE_SYSTEM_TORCH to install torch {want} into .venv, or use an image with "
                           f"torch {want}")
        if cuda is None:
            return False, f"USE_SYSTEM_TORCH=1 but the system torch {version} is a CPU build — drop USE_SYSTEM_TORCH"
        if not cuda_compatible(driver, cuda):
            return False, (f"the system torch {version} is built for CUDA {cuda} but the driver supports CUDA "
                           f"{driver} at most — update the driver or drop USE_SYSTEM_TORCH")
        return True, f"ok: reusing the system torch {version} (CUDA {cuda}) on a driver with CUDA {driver}"
    source = "the PyPI wheel"
    if torch_index_url:
        wheel_cuda, source = index_cuda(torch_index_url), torch_index_url
        if wheel_cuda is None:
            return False, (f"TORCH_INDEX_URL={torch_index_url}: cannot read the CUDA version from it — give the "
                           "PyTorch index URL that ends in /cuXYZ (e.g. .../cu126)")
    if wheel_cuda is None:
        return False, "constraints-gpu.txt has no '# cuda-wheel: X.Y' line — restore it"
    if not cuda_compatible(driver, wheel_cuda):
        return False, (f"torch {want}: {source} is built for CUDA {wheel_cuda} but this driver supports CUDA "
                       f"{driver} at most — use a pod whose driver supports CUDA {_major_minor(wheel_cuda)[0]} "
                       f"(nvidia-smi 'CUDA Version'), or set TORCH_INDEX_URL to the PyTorch wheel index for "
                       f"cu{driver.replace('.', '')} or lower, or USE_SYSTEM_TORCH=1 on an image with torch {want}")
    return True, f"ok: torch {want} from {source} (CUDA {wheel_cuda}) on a driver with CUDA {driver}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system-torch", action="store_true", help="check the system python's torch instead")
    ap.add_argument("--python", default=sys.executable, help="the system python (with --system-torch)")
    ap.add_argument("--torch-index-url", default="", help="a PyTorch wheel index URL ending in /cuXYZ")
    ap.add_argument("--constraints", default=str(CONSTRAINTS))
    a = ap.parse_args(argv)
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        smi = ""
    pins, wheel_cuda = read_constraints(Path(a.constraints))
    system = system_torch(a.python) if a.system_torch else None
    ok, line = check(smi, pins=pins, wheel_cuda=wheel_cuda, use_system_torch=a.system_torch, system=system,
                     torch_index_url=a.torch_index_url)
    print(("check_gpu_env: " if ok else "check_gpu_env: error: ") + line, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
