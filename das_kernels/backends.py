"""Which implementation of an op runs, per device, and why the others cannot.

Every backend choice of the ops lives here, with its reason; :func:`backend_report` lists
them all.

* Op backends: priority per device type: CUDA: triton -> cuda -> reference
  (multi_affine_warp: cuda first, see ``OP_PRIORITY``); CPU: cpp -> reference. Triton on
  CPU runs only through the interpreter (``TRITON_INTERPRET=1``) and only when asked for.
  ``DAS_KERNELS_BACKEND=triton|cuda|cpp|reference`` (or :func:`use`) forces one: a forced
  backend that cannot run raises with the reason; the automatic choice falls back with one
  warning naming the reason.
* Helper ops outside the Triton/CUDA contract (``HELPER_ORDER``, :func:`resolve_helper`):
  the first of their own backends that runs, the reference when that is forced.
* Optional kernels (``OPTIONAL_KERNELS``, :func:`optional_kernel`): used where the op's
  backend has one, else the op composes the kernels it always has.
* GSF's gate conv (:func:`gsf_gate_path`): ``gemm``, ``conv``, ``conv3d`` or ``triton``;
  defaults per device in ``GSF_GATE_DEFAULT``, ``DAS_KERNELS_GSF_GATE`` overrides them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import torch

BACKENDS = ("triton", "cuda", "cpp", "reference")
PRIORITY = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpp", "reference")}
# Per-op exceptions, from measurements (benchmarks/bench_warp.py --device cuda --shapes gpu,
# H100): the native CUDA warp beats Triton's, 1.04 vs 1.17 ms forward, 2.87 vs 8.51 ms backward.
OP_PRIORITY = {("cuda", "multi_affine_warp"): ("cuda", "triton", "reference")}
PRIORITY_REASON = {
    ("cuda", "multi_affine_warp"): "the native CUDA warp beats Triton's on an H100 "
    "(1.04 vs 1.17 ms forward, 2.87 vs 8.51 ms backward)",
}
ENV_VAR = "DAS_KERNELS_BACKEND"

# Helper ops outside the Triton/CUDA contract -> (their backends in order, why).
HELPER_ORDER = {
    "gsf_gate_taps": (
        ("cpp", "reference"),
        "sums the 27 tap maps of gsf_gate's CPU (gemm) path; GPUs take the grouped Conv2d",
    ),
}
# Optional kernels -> (the op whose backend they belong to, its Triton module, what runs
# without one).
OPTIONAL_KERNELS = {
    "gsf_pool_backward_accumulate": (
        "gsf_pool",
        "gsf",
        "gsf_shift_fuse's backward adds gsf_pool_backward's grad_x out of place",
    ),
}

# GSF's gate conv (das_kernels/ops/gsf_gate.py), not under DAS_KERNELS_BACKEND.
GSF_GATE_ENV = "DAS_KERNELS_GSF_GATE"
GSF_GATE_PATHS = ("gemm", "conv", "conv3d", "triton")
GSF_GATE_DEFAULT = {
    "cpu": ("gemm", "oneDNN's backward of the grouped Conv2d is ~10x slower than a GEMM"),
    "cuda": ("conv", "cuDNN's grouped Conv2d beats the batched GEMM (H100)"),
}
GSF_GATE_FALLBACK = ("conv", "the grouped Conv2d runs on any device")
GSF_GATE_OPT_IN = "conv3d and triton are opt-in: not yet timed on a GPU"

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


def resolve_helper(device: torch.device | str, op: str) -> str:
    """The backend of helper op `op` (``HELPER_ORDER``) on `device`: the reference when it is
    forced, else the first of the helper's backends that runs (a forced backend the helper
    lacks leaves it on that order: it never raises)."""
    if requested() == "reference":
        return "reference"
    device_type = torch.device(device).type
    order, _ = HELPER_ORDER[op]
    return next(n for n in order if unavailable_reason(n, device_type, op) is None)


def _optional_reason(kernel: str, backend: str) -> str | None:
    """None when `backend` (runnable) has the optional `kernel`, else why not."""
    _, triton_module, _ = OPTIONAL_KERNELS[kernel]
    if backend in ("cpp", "cuda"):
        key = "CPU" if backend == "cpp" else "CUDA"
        if torch._C._dispatch_has_kernel_for_dispatch_key(f"das_native::{kernel}", key):
            return None
        return f"the native extension has no {key} kernel {kernel}"
    if backend == "triton":
        module = importlib.import_module(f"das_kernels.triton.{triton_module}")
        return None if hasattr(module, kernel) else f"das_kernels.triton.{triton_module} lacks it"
    return "the reference has no fused kernel"


@functools.cache  # kernels register at import/load, before the op's backend is resolved
def optional_kernel(kernel: str, backend: str) -> Callable[..., Any] | None:
    """The optional `kernel` (``OPTIONAL_KERNELS``) of runnable `backend`, or None."""
    if _optional_reason(kernel, backend) is not None:
        return None
    if backend == "triton":
        module = importlib.import_module(f"das_kernels.triton.{OPTIONAL_KERNELS[kernel][1]}")
        return getattr(module, kernel)
    return getattr(torch.ops.das_native, kernel)


def triton_kernels(module: str, device: torch.device | str, what: str) -> ModuleType:
    """``das_kernels.triton.<module>``; ``BackendUnavailable`` "<what> cannot run on
    <device type>: <reason>" where Triton cannot run on `device`."""
    device_type = torch.device(device).type
    reason = unavailable_reason("triton", device_type)
    if reason is not None:
        raise BackendUnavailable(f"{what} cannot run on {device_type}: {reason}")
    return importlib.import_module(f"das_kernels.triton.{module}")


def gsf_gate_path(device: torch.device | str) -> str:
    """GSF's gate-conv implementation on `device` (``das_kernels.ops.gsf_gate``): ``gemm``
    (batched GEMM + gsf_gate_taps; CPU default), ``conv`` (grouped Conv2d over the frames;
    GPU default), ``conv3d`` (the official grouped Conv3d on a transposed clip view) or
    ``triton`` (Triton kernels; in ``gsf_module`` they read x and fuse the BatchNorm affine
    and ReLU); ``$DAS_KERNELS_GSF_GATE`` overrides the default (ValueError if it names
    none of them). ``triton`` where Triton cannot run raises ``BackendUnavailable``."""
    forced = os.environ.get(GSF_GATE_ENV)
    if forced is None:
        return GSF_GATE_DEFAULT.get(torch.device(device).type, GSF_GATE_FALLBACK)[0]
    if forced not in GSF_GATE_PATHS:
        raise ValueError(
            f"{GSF_GATE_ENV} must be one of {', '.join(GSF_GATE_PATHS)}, got {forced!r}"
        )
    if forced == "triton":
        triton_kernels("gsf_gate", device, f"{GSF_GATE_ENV}=triton")  # raises with the reason
    return forced


OPS: list[str] = []  # filled by das_kernels.ops as each op registers
TRITON_MODULE: dict[str, str] = {}  # op -> module under das_kernels.triton, when not the op's name


def _chosen(choose: Callable[..., str], *args: str) -> str:
    try:
        return choose(*args)
    except (BackendUnavailable, ValueError) as exc:
        return f"none ({exc})"


def _availability(name: str, reason: str | None) -> str:
    return f"  {name:<10} {'available' if reason is None else reason}"


def backend_report() -> str:
    """A human-readable table: per device type, every choice (op backends, helper ops,
    optional kernels, GSF's gate path), what runs, why, and why not the others."""
    lines = []
    device_types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dt in device_types:
        for op in OPS:
            why = PRIORITY_REASON.get((dt, op))
            lines.append(f"{dt} {op}: runs {_chosen(resolve, dt, op)}")
            order = OP_PRIORITY.get((dt, op)) or PRIORITY.get(dt, ("reference",))
            lines.append(f"  order      {' -> '.join(order)}" + (f" ({why})" if why else ""))
            lines += [_availability(n, unavailable_reason(n, dt, op)) for n in BACKENDS]
        for op, (order, why) in HELPER_ORDER.items():
            lines.append(f"{dt} {op} (helper): runs {_chosen(resolve_helper, dt, op)}")
            lines.append(f"  order      {' -> '.join(order)} ({why})")
            lines += [_availability(n, unavailable_reason(n, dt, op)) for n in order]
        for kernel, (op, _, without) in OPTIONAL_KERNELS.items():
            lines.append(f"{dt} {kernel} (optional kernel of {op}'s backend; without: {without})")
            for n in BACKENDS:
                reason = unavailable_reason(n, dt, op)
                lines.append(_availability(n, reason or _optional_reason(kernel, n)))
        default, why = GSF_GATE_DEFAULT.get(dt, GSF_GATE_FALLBACK)
        lines.append(f"{dt} gsf_gate path: runs {_chosen(gsf_gate_path, dt)}")
        lines.append(
            f"  default    {default} ({why}; {GSF_GATE_OPT_IN}); "
            f"${GSF_GATE_ENV}={'|'.join(GSF_GATE_PATHS)} overrides it"
        )
        for path in GSF_GATE_PATHS:  # all but triton are plain PyTorch
            reason = unavailable_reason("triton", dt) if path == "triton" else None
            lines.append(_availability(path, reason))
    if not torch.cuda.is_available():
        lines.append("cuda: no CUDA device (torch.cuda.is_available() is False)")
    from das_kernels import _native

    lines.append(_native.build_report())
    return "\n".join(lines)
