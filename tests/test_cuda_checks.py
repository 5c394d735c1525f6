"""runtime_cuda_checks_without_gpu: NVML-based CUDA checks are lifted only where no GPU exists."""

import os

import pytest
import torch

from streamrec.training.cuda_checks import VARIABLE, runtime_cuda_checks_without_gpu


def test_lifted_inside_and_restored_after_without_a_gpu(monkeypatch):
    monkeypatch.setenv(VARIABLE, "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with runtime_cuda_checks_without_gpu():
        assert os.environ[VARIABLE] == "0"
    assert os.environ[VARIABLE] == "1"
    with pytest.raises(RuntimeError):
        with runtime_cuda_checks_without_gpu():
            raise RuntimeError("a failed fit")
    assert os.environ[VARIABLE] == "1"


@pytest.mark.parametrize("setting, devices", [("1", 1), (None, 0), ("0", 0)])
def test_unchanged_with_a_gpu_or_without_nvml_checks(monkeypatch, setting, devices):
    if setting is None:
        monkeypatch.delenv(VARIABLE, raising=False)
    else:
        monkeypatch.setenv(VARIABLE, setting)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
    with runtime_cuda_checks_without_gpu():
        assert os.environ.get(VARIABLE) == setting
    assert os.environ.get(VARIABLE) == setting
