"""What this machine's CPU computes natively, for the fast paths and for every reported time.

Times in BENCHMARKS.md name the CPU beside them: a 2-core AMX Xeon and a 2-core AVX2-only EPYC
differ ~3x on the same code. ``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2`` and
``MKL_ENABLE_INSTRUCTIONS=AVX2`` make a fast CPU use the AVX2 kernels; ``native_bf16`` honours
them, so the slow case measured that way takes the slow case's path too.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from functools import lru_cache

FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    """The CPU's model name, which of ``FEATURES`` it has, and the kernels torch will use."""
    import torch

    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {
        "model": name,
        **{feature: feature in flags for feature in FEATURES},
        "torch_kernels": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
    }


def native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AMX or AVX512_BF16) and torch
    and oneDNN are allowed to use those kernels."""
    info = cpu_info()
    allowed = info["torch_kernels"].startswith("AVX512") and "AVX2" not in info["onednn_max_isa"]
    return allowed and (info["amx_bf16"] or info["avx512_bf16"])


def describe_cpu() -> str:
    """One line for a report: model, features, torch's kernels."""
    info = cpu_info()
    have = [f for f in FEATURES if info[f]] or ["none of " + "/".join(FEATURES)]
    line = f"{info['model']} ({', '.join(have)}; torch kernels {info['torch_kernels']}"
    if info["onednn_max_isa"]:
        line += f", ONEDNN_MAX_CPU_ISA={info['onednn_max_isa']}"
    return line + ")"


def _git(*args: str) -> str:
    """A git command's output in this package's checkout; "" where there is no git or checkout
    (an installed wheel), never another repository's answer for the working directory."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        done = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def provenance(command: list[str]) -> dict:
    """Where and when a measurement was taken, for a results file: CPU, torch's threads, date,
    the commit of distill's checkout (``+changes`` when tracked files differed from it; "" when
    distill is not a checkout), the command."""
    import torch

    commit = _git("rev-parse", "--short", "HEAD")
    dirty = commit and _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu": describe_cpu(),
        "cpu_info": cpu_info(),
        "threads": torch.get_num_threads(),
        "date": datetime.date.today().isoformat(),
        "commit": commit + ("+changes" if dirty else ""),
        "command": " ".join(command),
    }
