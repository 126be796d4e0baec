"""Test configuration: Triton through its interpreter on machines without CUDA."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from das_kernels import _native, backends  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backend_params(*ops: str) -> list:
    """pytest params (device, backend) for every pair, skipped with the reason one of `ops`
    cannot run."""
    params = []
    for device in DEVICES:
        for name in backends.BACKENDS:
            reasons = (backends.unavailable_reason(name, device, op) for op in ops)
            reason = next((r for r in reasons if r is not None), None)
            marks = [pytest.mark.skip(reason=f"{name}: {reason}")] if reason else []
            params.append(pytest.param(device, name, id=f"{device}-{name}", marks=marks))
    return params


@pytest.fixture(scope="session")
def native_ops():
    reason = _native.load_error()
    if reason is not None:
        pytest.skip(f"native ops unavailable: {reason}")
    return torch.ops.das_native
