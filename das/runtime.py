"""Run-time plumbing shared by search, train and evaluate: devices, process groups, seeds,
RNG states, atomic checkpoints and the ops-backend switch. No training logic here."""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import io
import os
import random
import signal
import socket
import sys
import threading
import zipfile
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
    "DistributedFailure",
    "OutDirBusy",
    "WriteFailure",
    "checkpoint_candidates",
    "comm_failure",
    "dist_timeout_s",
    "fault_point",
    "lock_out_dir",
    "all_reduce_",
    "atomic_save",
    "atomic_write_text",
    "backend_name",
    "broadcast_buffers",
    "deterministic",
    "get_rng_state",
    "init_distributed",
    "UnreadableCheckpoint",
    "load_checkpoint",
    "previous_path",
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
            "nccl" if dev.type == "cuda" else "gloo",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=dist_timeout_s()),
        )
    return DistEnv(rank, world, local_rank, dev)


def dist_timeout_s() -> float:
    """The collective timeout of a distributed run: ``DAS_DIST_TIMEOUT_S`` seconds (default
    600). A rank that hangs makes the others fail after this long; a rank that dies makes
    them fail at their next collective (gloo, nccl: the connection closes)."""
    text = os.environ.get("DAS_DIST_TIMEOUT_S", "600")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"DAS_DIST_TIMEOUT_S must be a positive number of seconds, got {text!r}")
    return value


class DistributedFailure(RuntimeError):
    """A collective of a distributed run failed: another rank died, hung or failed."""


_COMM_MARKERS = (
    "gloo",
    "nccl",
    "connection closed",
    "connection reset",
    "broken pipe",
    "timed out",
    "timeout",
    "socket",
)


def comm_failure(exc: BaseException, env: DistEnv) -> DistributedFailure | None:
    """`exc` as a :class:`DistributedFailure` naming this rank (and, with two ranks, the
    other one) when it is a failed or timed-out collective of `env`'s process group; None
    for any other error (and when the run has a single process)."""
    if not env.distributed or isinstance(exc, DistributedFailure):
        return None
    dist_error = getattr(dist, "DistError", ())
    text = str(exc)
    if not (
        (dist_error and isinstance(exc, dist_error))
        or (isinstance(exc, RuntimeError) and any(m in text.lower() for m in _COMM_MARKERS))
    ):
        return None
    peer = f"rank {1 - env.rank}" if env.world == 2 else "another rank"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return DistributedFailure(
        f"rank {env.rank} of {env.world}: a collective operation failed: {peer} died, hung "
        f"(collective timeout {dist_timeout_s():g} s, DAS_DIST_TIMEOUT_S) or failed; see its "
        f"output. ({first})"
    )


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


class WriteFailure(RuntimeError):
    """A file of the run could not be written (a full disk, a read-only or vanished
    ``--out``); the previous version of the file is intact. ``errno`` is the OSError's."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _no_interrupt() -> Iterator[None]:
    """SIGINT (Ctrl-C) waits until the block ends (main thread only): the renames that
    swap a checkpoint in are never cut in half."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda sig, frame: caught.append(sig))
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


def _write_durably(data: memoryview | bytes, tmp: Path, n: int) -> None:
    """`data` into `tmp`, flushed and fsynced; the fault hook ``checkpoint-write:n`` fires
    halfway."""
    chunk = 1 << 20
    with open(tmp, "wb") as f:
        half = len(data) // 2
        for start in range(0, len(data), chunk):
            f.write(data[start : start + chunk])
            if start <= half < start + chunk:
                f.flush()
                fault_point("checkpoint-write", n)
        f.flush()
        os.fsync(f.fileno())


def atomic_save(obj: Any, path: str | Path, keep_previous: bool = False) -> None:
    """torch.save `obj` to `path` atomically and durably: written to ``path.tmp``, fsynced,
    renamed over `path` (``os.replace``) and the directory fsynced, so a crash, a kill or a
    full disk never leaves a torn file. With `keep_previous` the file it replaces is kept
    as ``<stem>.prev<suffix>`` (``checkpoint.prev.pt``). WriteFailure (naming the file and
    saying the previous one is intact) when it cannot be written; the temp file is removed.
    The fault hook ``DAS_FAULT_AT=checkpoint-write[:N]`` fires halfway through the N-th
    write of this process, ``checkpoint-rotate[:N]`` between its two renames."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    buf = io.BytesIO()
    torch.save(obj, buf)
    n = _count("checkpoint-write")
    try:
        _write_durably(buf.getbuffer(), tmp, n)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            intact = f"; the previous {path.name} is intact" if path.exists() else ""
            raise WriteFailure(
                f"cannot write {path}: {exc.strerror or exc}{intact}", exc.errno
            ) from exc
        raise
    with _no_interrupt():
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
            fault_point("checkpoint-rotate", n)
        os.replace(tmp, path)
        _fsync_dir(path.parent)


def previous_path(path: str | Path) -> Path:
    """Where :func:`atomic_save` (`keep_previous`) keeps the file `path` replaced."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def checkpoint_candidates(path: str | Path) -> list[Path]:
    """`path` and its previous version (``checkpoint.pt``, ``checkpoint.prev.pt``), newest
    first, those that exist."""
    path = Path(path)
    return [p for p in (path, previous_path(path)) if p.is_file()]


def atomic_write_text(text: str, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise WriteFailure(f"cannot write {path}: {exc.strerror or exc}", exc.errno) from exc


class UnreadableCheckpoint(ValueError):
    """A checkpoint file that torch cannot read (truncated, corrupt, not a torch file)."""


def _zip_damage(path: Path) -> str | None:
    """What is wrong with the zip records of a torch checkpoint (their CRC-32s, which
    torch.load does not check: a flipped byte in a tensor would load silently), or None
    (also for files that are not zips: torch.load judges those)."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except Exception as exc:  # a damaged header
        return f"{type(exc).__name__}: {exc}"
    return None if bad is None else f"the CRC-32 of its record {bad} does not match its data"


def load_checkpoint(path: str | Path, kind: str) -> dict[str, Any]:
    """Load a checkpoint written by das (`kind` ``search`` or ``train``), with clear errors:
    FileNotFoundError, UnreadableCheckpoint (a ValueError) for a file torch cannot read or
    whose records fail their CRC-32 check, ValueError for another kind of checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    damage = _zip_damage(path)
    if damage is not None:
        raise UnreadableCheckpoint(f"cannot read checkpoint {path} (corrupt): {damage}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnreadableCheckpoint(
            f"cannot read checkpoint {path} (truncated or corrupt?): {reason}"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        found = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a das {kind} checkpoint (found {found!r})")
    return ckpt


# ----------------------------------------------------------------------------- out-dir lock


class OutDirBusy(RuntimeError):
    """Another live process holds the lock of this ``--out``."""


@contextlib.contextmanager
def lock_out_dir(out: str | Path) -> Iterator[Path]:
    """Hold ``OUT/.lock`` (an exclusive ``flock``) for the block: a second run into the
    same ``--out`` raises OutDirBusy naming the holder. The kernel drops the lock when its
    process dies, so a killed run never blocks a later ``--resume``."""
    path = Path(out) / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise OutDirBusy(
                f"--out {out} is in use by another das run ({holder}; lock {path}): wait for "
                "it to finish, stop it, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- fault hook

_COUNTS: dict[str, int] = {}


def _count(name: str) -> int:
    """How many times (1, 2, ...) `name` was reached in this process, this time included."""
    _COUNTS[name] = _COUNTS.get(name, 0) + 1
    return _COUNTS[name]


_SIGNALS = {
    "KILL": signal.SIGKILL,
    "INT": signal.SIGINT,
    "TERM": signal.SIGTERM,
    "STOP": signal.SIGSTOP,
}


def fault_point(name: str, index: int | None = None) -> None:
    """Testing hook: signal this process at point `name` number `index` (by default: how
    many times `name` was reached in this process, from 1) when ``DAS_FAULT_AT`` names it
    (``name:N``, or ``name`` for the first time) and, when ``DAS_FAULT_RANK`` is set, this
    is that rank (``RANK``). The signal is ``DAS_FAULT_SIGNAL``: ``KILL`` (default),
    ``INT`` (as Ctrl-C), ``TERM`` or ``STOP`` (a hung process).

    The points: ``step:N`` before search/train step N (from 0, counted over the whole
    run), ``epoch:N`` after epoch N's steps (from 1), before its evaluation and
    checkpoint, ``select:N`` before the N-th evaluation of selection in this process,
    ``checkpoint-write:N`` halfway through writing this process's N-th checkpoint,
    ``checkpoint-rotate:N`` between its two renames. Unset: one dictionary look-up."""
    want = os.environ.get("DAS_FAULT_AT")
    if not want:
        return
    if index is None:
        index = _count(f"fault:{name}")
    if want == name:  # the first time this process reaches `name`
        if _count(f"fault-first:{name}") != 1:
            return
    elif want != f"{name}:{index}":
        return
    rank = os.environ.get("DAS_FAULT_RANK")
    if rank is not None and rank != os.environ.get("RANK", "0"):
        return
    which = os.environ.get("DAS_FAULT_SIGNAL", "KILL").upper()
    print(f"DAS_FAULT_AT={want}: sending SIG{which} to myself", file=sys.stderr, flush=True)
    os.kill(os.getpid(), _SIGNALS.get(which, signal.SIGKILL))  # INT: KeyboardInterrupt here


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
