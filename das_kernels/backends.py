"""Which implementation of an op runs, per device, and why the others cannot.

Priority per device type: CUDA: triton -> cuda -> reference (multi_affine_warp: cuda first,
see ``OP_PRIORITY``); CPU: cpp -> reference.
Triton on CPU runs only through the interpreter (``TRITON_INTERPRET=1``) and only when
asked for. ``DAS_KERNELS_BACKEND=triton|cuda|cpp|reference`` (or :func:`use`) forces one:
a forced backend that cannot run raises with the reason; the automatic choice falls back
with one warning naming the reason.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import warnings
from collections.abc import Iterator

import torch

BACKENDS = ("triton", "cuda", "cpp", "reference")
PRIORITY = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpp", "reference")}
# Per-op exceptions, from measurements (benchmarks/bench_warp.py --device cuda --shapes gpu,
# H100): the native CUDA warp beats Triton's, 1.04 vs 1.17 ms forward, 2.87 vs 8.51 ms backward.
OP_PRIORITY = {("cuda", "multi_affine_warp"): ("cuda", "triton", "reference")}
ENV_VAR = "DAS_KERNELS_BACKEND"

_forced: list[str] = []
_warned: set[tuple[str, str, str | None]] = set()


class BackendUnavailable(RuntimeError):
    """A backend was asked for but cannot run here; the message says why."""


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _triton_import_error() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # pragma: no cover - broken installs only
        return f"triton failed to import: {exc}"
    return None


def unavailable_reason(backend: str, device_type: str, op: str | None = None) -> str | None:
    """None when `backend` can run (op `op`, if given) on `device_type`, else a one-line reason."""
    reason = _backend_reason(backend, device_type)
    if reason is None and op is not None:
        reason = _op_reason(backend, device_type, op)
    return reason


@functools.cache  # static once the backend itself can run (kernels register at import/load)
def _op_reason(backend: str, device_type: str, op: str) -> str | None:
    if backend == "triton":
        module = f"das_kernels.triton.{TRITON_MODULE.get(op, op)}"
        if importlib.util.find_spec(module) is None:
            return f"no Triton kernel for {op} ({module} is missing)"
    elif backend in ("cpp", "cuda"):
        key = "CPU" if backend == "cpp" else "CUDA"
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"das_native::{op}_forward", key):
            return f"the native extension has no {key} kernel for {op}"
    return None


def _backend_reason(backend: str, device_type: str) -> str | None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "reference":
        return None
    if backend == "triton":
        if device_type == "cpu" and not _triton_interpreted():
            return "Triton runs on CPU only under the interpreter (set TRITON_INTERPRET=1)"
        if device_type not in ("cuda", "cpu"):
            return f"Triton does not support device type {device_type!r}"
        if device_type == "cuda" and not torch.cuda.is_available():
            return "CUDA is not available"
        return _triton_import_error()
    from das_kernels import _native

    if backend == "cpp":
        if device_type != "cpu":
            return f"the C++ backend runs on CPU tensors, not {device_type!r}"
        return _native.load_error()
    # backend == "cuda"
    if device_type != "cuda":
        return f"the CUDA backend runs on CUDA tensors, not {device_type!r}"
    return _native.load_error() or _native.cuda_error()


def requested() -> str | None:
    """The forced backend (innermost :func:`use`, else $DAS_KERNELS_BACKEND), or None."""
    if _forced:
        return _forced[-1]
    name = os.environ.get(ENV_VAR, "").strip().lower()
    if name in ("", "auto"):
        return None
    if name not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={name!r} is not one of auto, {', '.join(BACKENDS)}")
    return name


def resolve(device: torch.device | str, op: str | None = None) -> str:
    """The backend that runs `op` (default: any op) on `device` now."""
    device_type = torch.device(device).type
    forced = requested()
    if forced is not None:
        reason = unavailable_reason(forced, device_type, op)
        if reason is not None:
            raise BackendUnavailable(f"backend {forced!r} cannot run on {device_type}: {reason}")
        return forced
    skipped = []
    order = OP_PRIORITY.get((device_type, op)) or PRIORITY.get(device_type, ("reference",))
    for name in order:
        reason = unavailable_reason(name, device_type, op)
        if reason is None:
            if skipped and (device_type, name, op) not in _warned:
                _warned.add((device_type, name, op))
                warnings.warn(
                    f"das_kernels: {op or 'ops'} run on the {name!r} backend on {device_type}; "
                    + "; ".join(skipped),
                    RuntimeWarning,
                    stacklevel=3,
                )
            return name
        skipped.append(f"{name} unavailable: {reason}")
    raise AssertionError("unreachable: the reference backend always runs")


@contextlib.contextmanager
def use(backend: str) -> Iterator[None]:
    """Force `backend` inside the block (takes precedence over $DAS_KERNELS_BACKEND)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    _forced.append(backend)
    try:
        yield
    finally:
        _forced.pop()


OPS: list[str] = []  # filled by das_kernels.ops as each op registers
TRITON_MODULE: dict[str, str] = {}  # op -> module under das_kernels.triton, when not the op's name


def backend_report() -> str:
    """A human-readable table: per device type and op, the backend that runs and why not others."""
    lines = []
    device_types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device_type in device_types:
        for op in OPS:
            try:
                chosen = resolve(device_type, op)
            except BackendUnavailable as exc:
                chosen = f"none ({exc})"
            lines.append(f"{device_type} {op}: runs {chosen}")
            for name in BACKENDS:
                reason = unavailable_reason(name, device_type, op)
                lines.append(f"  {name:<10} {'available' if reason is None else reason}")
    if not torch.cuda.is_available():
        lines.append("cuda: no CUDA device (torch.cuda.is_available() is False)")
    from das_kernels import _native

    lines.append(_native.build_report())
    return "\n".join(lines)
