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
    """{"model": CPU model name, "flags": the RELEVANT_CPU_FLAGS it has, "machine": arch, "cores": n}.

    The model carries the x86 family, model and stepping numbers where the kernel gives them: cloud
    CPUs often report a bare name ("AMD EPYC" for Zen 3, Zen 4 and Zen 5 alike), and the model is
    what benchmark files, run configs and the autotuner's cache tell machines apart by."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text(errors="replace") if cpuinfo.is_file() else ""
    name, ids, flags = parse_cpuinfo(text)
    return {"model": with_cpu_ids(name or platform.processor() or platform.machine(), ids),
            "flags": [f for f in RELEVANT_CPU_FLAGS if f in flags],
            "machine": platform.machine(), "cores": os.cpu_count()}


def parse_cpuinfo(text: str) -> tuple[str | None, dict[str, str], set[str]]:
    """(model name, {"cpu family", "model", "stepping"}, flags) of the first CPU in /proc/cpuinfo's text."""
    name, ids, flags = None, {}, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name is None:
            name = value.strip()
        elif key in ("cpu family", "model", "stepping") and key not in ids:
            ids[key] = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return name, ids, flags


def with_cpu_ids(name: str, ids: dict[str, str]) -> str:
    """'AMD EPYC (family 26 model 2 stepping 1)' from the name and /proc/cpuinfo's numbers."""
    parts = [f"{label} {ids[key]}" for key, label in (("cpu family", "family"), ("model", "model"),
                                                      ("stepping", "stepping")) if ids.get(key)]
    return f"{name} ({' '.join(parts)})" if parts else name


def cpu_class() -> str:
    """A short label of the CPU class for result files: 'amx', 'avx512' or 'avx2' (x86-64), else the arch.

    'amx' (Intel Xeon with AMX tiles, AVX-512 included) is a class of its own: oneDNN runs
    bfloat16 matmuls and convolutions on the tiles there, so its bfloat16 speed is not the
    'avx512' class's (AMD Zen 4 and Zen 5: AVX512_BF16 instructions only; the two run the same
    kernels, at different speeds, and the model string of `cpu_info` tells them apart)."""
    info = cpu_info()
    if "amx_bf16" in info["flags"]:
        return "amx"
    if "avx512f" in info["flags"]:
        return "avx512"
    if "avx2" in info["flags"]:
        return "avx2"
    return info["machine"]
