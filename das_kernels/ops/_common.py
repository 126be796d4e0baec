"""Shared helpers for op registration: input checks and backend dispatch."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from das_kernels import backends

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, value: Any, ndims: tuple[int, ...]) -> None:
    """TypeError/ValueError naming `name` unless `value` is a float tensor of a rank in `ndims`."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {value.dtype}")
    if value.dim() not in ndims:
        ranks = " or ".join(str(n) for n in ndims)
        raise ValueError(f"{name} must have {ranks} dims, got shape {tuple(value.shape)}")


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all inputs must be on one device, got {listing}")


def has_values(t: torch.Tensor) -> bool:
    """Whether `t` has data a value check can read (not meta, fake, or under compile)."""
    if torch.compiler.is_compiling() or t.device.type == "meta":
        return False
    from torch._subclasses.fake_tensor import is_fake

    return not is_fake(t)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Parameters (theta, weights, ...) are handled in fp32, or fp64 for fp64 inputs."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def dispatch(
    op: str, device: torch.device, impls: dict[str, Callable[..., Any]]
) -> Callable[..., Any]:
    """The implementation of `op` on the backend that runs on `device` now."""
    return impls[backends.resolve(device, op)]


def register_op_name(op: str, triton_module: str | None = None) -> None:
    """List `op` in das_kernels.backend_report(); its Triton kernels live in
    ``das_kernels.triton.<triton_module>`` (default: the op's name)."""
    if op not in backends.OPS:
        backends.OPS.append(op)
    if triton_module is not None:
        backends.TRITON_MODULE[op] = triton_module


def backend_impls(
    name: str, triton_module: str, reference_impl: Callable[..., Any]
) -> dict[str, Callable[..., Any]]:
    """{backend: implementation} of one kernel entry point called `name`.

    cuda/cpp run ``torch.ops.das_native.<name>``; triton runs
    ``das_kernels.triton.<triton_module>.<name>`` (imported on first call: triton is
    optional); reference runs `reference_impl`. All take the same arguments.
    """

    def native(*args: Any) -> Any:
        return getattr(torch.ops.das_native, name)(*args)

    def triton(*args: Any) -> Any:
        module = importlib.import_module(f"das_kernels.triton.{triton_module}")
        return getattr(module, name)(*args)

    return {"triton": triton, "cuda": native, "cpp": native, "reference": reference_impl}


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """TypeError/ValueError naming `name` unless `value` is an int >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value
