"""What a run ran on: machine description and package versions, recorded next to every result.

One definition for the run report of the index job, the evaluation report and the benchmark results.

* :func:`machine_info` describes the machine. Its keys are the union of what the reports have
  recorded so far, so every existing report renders: ``cpu``/``cpu_model``, ``cores``/``logical_cpus``
  and ``memory_gib``/``ram_gib`` are the same figures under the evaluation's and the benchmarks' names.
  Values that cannot be read are ``None``; nothing here raises.
* :func:`versions` is the flat ``{"python": ..., package: version, "poppler": ...}`` map of the run
  report and the evaluation (a missing package reads ``"not installed"``); :func:`package_versions`
  is the benchmarks' ``{package: version or None}``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Packages whose versions the reports record unless told otherwise.
DEFAULT_PACKAGES = (
    "torch",
    "transformers",
    "colpali-engine",
    "ray",
    "numpy",
    "pyarrow",
    "ir-measures",
    "pdf2image",
    "hydra-core",
)
NOT_INSTALLED = "not installed"


def package_versions(packages: Iterable[str]) -> dict[str, str | None]:
    """``{package: installed version}``, ``None`` for a package that is not installed."""
    out: dict[str, str | None] = {}
    for package in packages:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def poppler_banner() -> str | None:
    """The first line of ``pdftoppm -v`` (``"pdftoppm version 22.12.0"``); ``None`` without poppler."""
    try:
        result = subprocess.run(["pdftoppm", "-v"], capture_output=True, text=True, timeout=10)
        return result.stderr.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def versions(packages: Iterable[str] = DEFAULT_PACKAGES, poppler: bool = True) -> dict[str, str]:
    """``{"python", *packages, "poppler"}`` versions; ``"not installed"`` for what is missing.

    ``poppler`` is the bare version number of ``pdftoppm`` (``"unknown"`` when it prints none);
    ``poppler=False`` leaves the key out.
    """
    out = {"python": platform.python_version()}
    out.update({name: version or NOT_INSTALLED for name, version in package_versions(packages).items()})
    if poppler:
        banner = poppler_banner()
        if banner is None:
            out["poppler"] = NOT_INSTALLED
        else:
            out["poppler"] = banner.split()[-1] if banner.strip() else "unknown"
    return out


def _cpu() -> tuple[str | None, str | None, str | None]:
    """``(model name, cpu family, model)`` of the first CPU in ``/proc/cpuinfo``."""
    name = family = model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name" and name is None:
                name = value
            elif key == "cpu family" and family is None:
                family = value
            elif key == "model" and model is None:
                model = value
    return name, family, model


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 2**30, 1)
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return None


def _torch_info() -> tuple[str | None, int | None]:
    """``(GPU name, torch intra-op threads)``; ``(None, None)`` when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None, None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return gpu, torch.get_num_threads()


def machine_info(packages: Iterable[str] | None = None) -> dict[str, Any]:
    """CPU, cores, memory, accelerator, OS, Python and poppler of this machine (what timings ran on).

    With ``packages``, also ``"packages": {name: version or None}`` (the benchmarks' layout).
    """
    cpu_model, family, model = _cpu()
    memory = _memory_gib()
    gpu, torch_threads = _torch_info()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model or platform.processor() or platform.machine(),
        "cpu_model": cpu_model or "unknown",
        "cpu_family_model": f"family {family} model {model}" if family else None,
        "cores": os.cpu_count(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gib": memory,
        "ram_gib": memory,
        "gpu": gpu,
        "torch_threads": torch_threads,
        "poppler": poppler_banner(),
    }
    if packages is not None:
        info["packages"] = package_versions(packages)
    return info
