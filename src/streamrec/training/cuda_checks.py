"""CUDA availability checks while training on a machine without a GPU.

Importing Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, so that
``torch.cuda.is_available()`` asks NVML rather than the CUDA runtime (which would keep
forked workers from using CUDA). torch caches the answer only once CUDA is initialised,
which CPU training never does, and ``Adam.step`` asks once per step: on a machine without
a GPU each answer is a failed load of ``libnvidia-ml`` through ctypes, 0.39 ms, ~2% of
the default model's step (docs/benchmarks.md). Where no CUDA device exists there is no
CUDA to keep safe across a fork, and the runtime's answer is the same and cached.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch

VARIABLE = "PYTORCH_NVML_BASED_CUDA_CHECK"


@contextmanager
def runtime_cuda_checks_without_gpu() -> Iterator[None]:
    """Within the block, check CUDA through the runtime if this machine has no CUDA device
    (and NVML-based checks are on); anywhere else, change nothing."""
    if os.environ.get(VARIABLE) != "1" or torch.cuda.device_count() > 0:
        yield
        return
    os.environ[VARIABLE] = "0"
    try:
        yield
    finally:
        os.environ[VARIABLE] = "1"
