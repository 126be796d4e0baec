"""Run-time plumbing shared by search, train and evaluate: devices, process groups, seeds,
RNG states, atomic checkpoints and the ops-backend switch. No training logic here."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import das_kernels

__all__ = [
    "DistEnv",
    "all_reduce_",
    "atomic_save",
    "atomic_write_text",
    "backend_name",
    "broadcast_buffers",
    "deterministic",
    "get_rng_state",
    "init_distributed",
    "load_checkpoint",
    "ops_backend",
    "resolve_device",
    "seed_everything",
    "set_rng_state",
    "shutdown_distributed",
    "synchronize",
]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda`` without CUDA raises ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available")
    return device


@dataclass
class DistEnv:
    """Where this process sits: rank/world (1 process by default) and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1) or run alone.

    nccl on CUDA, gloo on CPU; each CUDA process takes ``cuda:LOCAL_RANK``.
    """
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv(device=dev)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if dev.type == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world
        )
    return DistEnv(rank, world, local_rank, dev)


def shutdown_distributed(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_(tensors: list[torch.Tensor], env: DistEnv, average: bool = True) -> None:
    """In-place all-reduce (mean or sum) of `tensors` over the ranks; no-op alone."""
    if not env.distributed or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    if average:
        flat /= env.world
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t).to(t.dtype))
        offset += n


def broadcast_buffers(module: nn.Module, env: DistEnv) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank."""
    if env.distributed:
        for b in module.buffers():
            dist.broadcast(b, src=0)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """With `enabled`: deterministic algorithms (torch's, cuDNN's, cuBLAS's and das_kernels'
    deterministic backward paths) inside the block, so CUDA runs repeat bit for bit (a
    resumed run equals an uninterrupted one); ops without a deterministic CUDA kernel warn.
    CPU runs are reproducible either way. The previous settings are restored on exit."""
    if not enabled:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read by cuBLAS at use
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2:]


def get_rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to ``path.tmp`` then ``os.replace``: a crash never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, kind: str) -> dict[str, Any]:
    """Load a checkpoint written by das (`kind` ``search`` or ``train``), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        found = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a das {kind} checkpoint (found {found!r})")
    return ckpt


@contextlib.contextmanager
def ops_backend(name: str) -> Iterator[None]:
    """``fused``: das_kernels picks its fastest backend; ``reference``: pure PyTorch."""
    if name == "fused":
        yield
    elif name == "reference":
        with das_kernels.backends.use("reference"):
            yield
    else:
        raise ValueError(f"ops backend must be 'fused' or 'reference', got {name!r}")


def backend_name(device: torch.device, ops_backend_name: str) -> str:
    """The das_kernels backend that runs on `device` under `ops_backend_name` (for reports;
    never raises: an unavailable backend is described instead)."""
    with ops_backend(ops_backend_name):
        try:
            return das_kernels.backends.resolve(device)
        except Exception as exc:  # report, never fail the run for it
            return f"unavailable ({exc})"


def synchronize(device: torch.device) -> None:
    """Wait for `device`'s queued work (CUDA; a no-op on CPU), e.g. before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
