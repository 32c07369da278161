"""The CPU this runs on: model, the flags that decide TensorFlow's CPU kernels, and its class.

No TensorFlow here: `reptile_tf.cost` (the workflow's plan projections) picks the benchmark of
this machine's class with it. `reptile_tf.runtime` adds what TensorFlow reports (oneDNN state).
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

# CPU flags that decide TensorFlow's CPU kernels (oneDNN default, bf16 speed).
RELEVANT_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_tile")

@functools.cache
def cpu_info() -> dict[str, Any]:
    """{"model": CPU model name, "flags": the RELEVANT_CPU_FLAGS it has, "machine": arch, "cores": n}."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    return {"model": model, "flags": [f for f in RELEVANT_CPU_FLAGS if f in flags],
            "machine": platform.machine(), "cores": os.cpu_count()}


def cpu_class() -> str:
    """A short label of the CPU class for result files: 'amx', 'avx512' or 'avx2' (x86-64), else the arch.

    'amx' (Intel Xeon with AMX tiles, AVX-512 included) is a class of its own: oneDNN runs
    bfloat16 matmuls and convolutions on the tiles there, so its bfloat16 speed is not the
    'avx512' class's (AMD Zen 4: AVX512_BF16 instructions only)."""
    info = cpu_info()
    if "amx_bf16" in info["flags"]:
        return "amx"
    if "avx512f" in info["flags"]:
        return "avx512"
    if "avx2" in info["flags"]:
        return "avx2"
    return info["machine"]
