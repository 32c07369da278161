"""reptile-tf: benchmark and reproducibility suite for Reptile, FOMAML and MAML (TensorFlow 2)."""

import os as _os
import platform as _platform
import sys as _sys

__version__ = "0.1.0"

# Where the user did not choose, turn oneDNN on before TensorFlow is imported (the variable is
# read once, at import). TensorFlow 2.21 enables it by default only on CPUs with AVX512_VNNI,
# AVX512_BF16, AVX_VNNI or AMX; on other x86-64 CPUs (Zen 3, older Intel) it stays off, and
# then TF's own kernels cannot differentiate a grouped convolution, the fast path of our conv
# nets. Every x86-64 build of TensorFlow ships oneDNN; elsewhere (ARM, macOS) we leave TF's
# default and `runtime.grouped_conv_gradient_available` picks a path that works there.
# `runtime.onednn_source()` reports who decided.
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
ONEDNN_SET_BY_USER = ONEDNN_VARIABLE in _os.environ
ONEDNN_SET_TOO_LATE = "tensorflow" in _sys.modules
if not ONEDNN_SET_BY_USER and _platform.machine().lower() in ("x86_64", "amd64"):
    _os.environ[ONEDNN_VARIABLE] = "1"

# One inter-op thread where the user did not choose: MAML is bit-reproducible on CPU only with it
# (`runtime.deterministic_runtime`, which sets it too, but only in a process where TensorFlow has
# not run an op yet; a test session or a notebook usually has). TensorFlow reads the variable when
# its runtime starts, at the first op, so this covers every process that imports reptile_tf before
# that: the CLI, the pipeline's jobs, the tests. (The Snakefile imports the package while planning
# and puts its environment back afterwards: the jobs start from the user's.)
INTEROP_VARIABLE = "TF_NUM_INTEROP_THREADS"
_os.environ.setdefault(INTEROP_VARIABLE, "1")
