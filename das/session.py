"""The one setup path of search, train, evaluate and the benchmarks, from a typed config:

data (:func:`load_bundle`) -> loaders (:func:`train_loader`, :func:`eval_loader`) ->
network (:func:`search_network`, :func:`variant_network`) -> distributed wrap
(:func:`distribute`) -> resume (:func:`resume`); :func:`run_job` strings them together
for a job (a :class:`das.search.Searcher` or :class:`das.train.Trainer`: anything with
``state_dict``/``load_state_dict``/``run``) inside :func:`process` (the process group,
CPU threads) with the configured ops backend and determinism.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from das.cell import DASCell, Genotype, random_genotype
from das.config import ConfigError, DataConfig, RunConfig
from das.data import BatchLoader, DataBundle, ImageSet, load_data
from das.models import VideoNetwork, VideoResNet, build_backbone
from das.runtime import (
    DistEnv,
    OutDirBusy,
    UnreadableCheckpoint,
    WriteFailure,
    atomic_save,
    atomic_write_text,
    checkpoint_candidates,
    comm_failure,
    deterministic,
    get_rng_state,
    init_distributed,
    load_checkpoint,
    lock_out_dir,
    ops_backend,
    shutdown_distributed,
)
from das.variants import build_network

__all__ = [
    "DataMeta",
    "Job",
    "checkpoint_state",
    "distribute",
    "eval_loader",
    "load_bundle",
    "process",
    "resume",
    "run_job",
    "save_checkpoint",
    "search_network",
    "train_loader",
    "train_genotype",
    "variant_network",
]


# ----------------------------------------------------------------------------- process


@contextlib.contextmanager
def process(
    device: str, threads: int | None = None, env: DistEnv | None = None
) -> Iterator[DistEnv]:
    """This process's place in the run: `env` as given, or the process group torchrun
    describes (joined here and left on exit); ``threads`` sets torch's CPU threads."""
    own = env is None
    env = env or init_distributed(device)
    try:
        if threads:
            torch.set_num_threads(threads)
        yield env
    finally:
        if own:
            shutdown_distributed(env)


# ----------------------------------------------------------------------------- data


def load_bundle(data: DataConfig, source: str | None = None) -> DataBundle:
    """The dataset of `data` (``source`` replaces its path, format then detected)."""
    return load_data(
        source or data.data,
        fmt="auto" if source else data.data_format,
        image_size=data.image_size,
        val_fraction=data.val_fraction,
        split_seed=0,
        limit_train=data.limit_train,
        limit_val=data.limit_val,
    )


def train_loader(
    cfg: RunConfig, bundle: DataBundle, images: ImageSet, stream: int, env: DistEnv
) -> BatchLoader:
    """Shuffled, augmented batches (crop padding, flips, cutout of ``cfg.data``) of
    ``cfg``'s batch size (at most the set's size), dropping the last partial batch."""
    data = cfg.data
    return BatchLoader(
        images,
        min(cfg.batch_size, len(images)),
        mean=bundle.mean,
        std=bundle.std,
        train=True,
        seed=cfg.seed,
        stream=stream,
        pad=bundle.image_size // 8 if data.crop_pad is None else data.crop_pad,
        flip=bundle.flip if data.flip == "auto" else data.flip == "on",
        cutout=data.cutout,
        drop_last=True,
        rank=env.rank,
        world=env.world,
        device=env.device,
        num_workers=cfg.runtime.workers,
    )


def eval_loader(
    images: ImageSet,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    env: DistEnv,
    workers: int = 0,
) -> BatchLoader:
    """Batches in a fixed order, nothing random, sharded over the ranks; ``workers``
    DataLoader processes read them (``--workers``)."""
    return BatchLoader(
        images,
        batch_size,
        mean=tuple(mean),
        std=tuple(std),
        train=False,
        rank=env.rank,
        world=env.world,
        device=env.device,
        num_workers=workers,
    )


@dataclass(frozen=True)
class DataMeta:
    """What a network needs to know of its data (kept in train checkpoints)."""

    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, bundle: DataBundle) -> DataMeta:
        return cls(
            bundle.num_classes,
            bundle.in_channels,
            bundle.image_size,
            tuple(bundle.mean),
            tuple(bundle.std),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataMeta:
        return cls(
            d["num_classes"], d["in_channels"], d["image_size"], tuple(d["mean"]), tuple(d["std"])
        )


def _aspect(bundle: DataBundle) -> float:
    return bundle.train.x.shape[-1] / bundle.train.x.shape[-2]


# ----------------------------------------------------------------------------- networks


def search_network(cfg: RunConfig, bundle: DataBundle) -> VideoNetwork:
    """The supernet: a mixed :class:`DASCell` (``cfg.cell``) + the video backbone."""
    model, cell = cfg.model, cfg.cell
    assert cell is not None and model.frames is not None
    das_cell = DASCell(
        model.frames,
        cell.nodes,
        cell.ops,
        cell.learn_magnitudes,
        model.step_mode,
        aspect=_aspect(bundle),
        pixel_mean=bundle.mean,
        pixel_std=bundle.std,
        magnitudes=cell.magnitudes,
    )
    backbone = build_backbone(
        model.arch,
        bundle.num_classes,
        bundle.in_channels,
        model.frames,
        model.fusion,
        model.gsf_ratio,
        image_size=bundle.image_size,
        width_mult=model.width_mult,
    )
    return with_memory(VideoNetwork(das_cell, backbone), cfg.runtime.memory)


def with_memory(network: nn.Module, mode: str) -> nn.Module:
    """`network` with every video backbone in it set to ``--memory`` `mode`."""
    for module in network.modules():
        if isinstance(module, VideoResNet):
            module.memory = mode
    return network


def eval_chunk(cfg: RunConfig) -> int | None:
    """Images per forward pass in evaluation: ``--batch-size`` when lean, else the batch."""
    return cfg.batch_size if cfg.runtime.memory == "lean" else None


def train_genotype(cfg: RunConfig) -> Genotype | None:
    """``--genotype``: a genotype.json, ``random`` (seeded, affine5, 4 nodes) or None."""
    assert cfg.train is not None
    spec = cfg.train.genotype
    if spec is None:
        return None
    if spec == "random":
        return random_genotype("affine5", 4, cfg.model.frames or 4, cfg.seed, cfg.model.step_mode)
    return Genotype.load(spec)


def variant_network(
    cfg: RunConfig,
    genotype: Genotype | None,
    meta: DataMeta,
    aspect: float,
    augment: bool = True,
) -> VideoNetwork:
    """The network of ``cfg.train.variant`` (see :mod:`das.variants`); ``augment=False``
    leaves out a ``--policy`` (evaluation: it does not act there, and its files need not
    exist any more)."""
    assert cfg.train is not None
    model = cfg.model
    network = build_network(
        cfg.train.variant,
        genotype,
        frames=model.frames or (genotype.frames if genotype else 4),
        fusion=model.fusion,
        num_classes=meta.num_classes,
        in_channels=meta.in_channels,
        image_size=meta.image_size,
        arch=model.arch,
        gsf_ratio=model.gsf_ratio,
        width_mult=model.width_mult,
        aspect=aspect,
        pixel_stats=(meta.mean, meta.std),
    )
    if augment and cfg.train.policy is not None:  # the 2D baseline, images augmented
        from das.policy import build_policy, parse_policy

        network.cell = build_policy(parse_policy(cfg.train.policy), meta.mean, meta.std, aspect)
    return with_memory(network, cfg.runtime.memory)


def distribute(module: nn.Module, env: DistEnv) -> nn.Module:
    """`module` in DDP when the run has several processes, else `module` itself."""
    if not env.distributed:
        return module
    ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


# ----------------------------------------------------------------------------- checkpoints


CHECKPOINT_VERSION = 2  # 1: the config was a flat dict of option names


def checkpoint_state(cfg: RunConfig, **state: Any) -> dict[str, Any]:
    """A job's checkpoint: its kind (``cfg.command``), version, config (as a dict), the job's
    own `state` and the RNG states (``load_state_dict`` restores them with
    :func:`das.runtime.set_rng_state`)."""
    return {
        "kind": cfg.command,
        "version": CHECKPOINT_VERSION,
        "config": cfg.to_dict(),
        **state,
        "rng": get_rng_state(),
    }


def save_checkpoint(state: dict[str, Any], cfg: RunConfig, env: DistEnv) -> None:
    """``OUT/checkpoint.pt`` (atomic and fsynced, rank 0; the one it replaces kept as
    ``OUT/checkpoint.prev.pt``), then every rank waits for it."""
    if env.is_main:
        atomic_save(state, cfg.out / "checkpoint.pt", keep_previous=True)
    env.barrier()


@dataclass
class Resumed:
    """Which checkpoint ``--resume`` took (`path`), and those it skipped as unreadable."""

    path: Path
    unreadable: list[Path]


def resume(cfg: RunConfig, env: DistEnv) -> tuple[RunConfig, dict[str, Any] | None]:
    """With ``--resume`` and a checkpoint in ``OUT``: the checkpoint's config (with this
    command line's runtime settings, RuntimeConfig.FROM_COMMAND_LINE) and the checkpoint;
    else `cfg` and None. The checkpoint is ``OUT/checkpoint.pt`` or, when that is missing
    or unreadable (truncated, corrupt), ``OUT/checkpoint.prev.pt`` with a warning.
    ConfigError for a checkpoint das cannot resume, naming the file(s)."""
    cfg, ckpt, _ = _resume(cfg, env)
    return cfg, ckpt


def _resume(
    cfg: RunConfig, env: DistEnv
) -> tuple[RunConfig, dict[str, Any] | None, Resumed | None]:
    latest = cfg.out / "checkpoint.pt"
    if not cfg.runtime.resume:
        return cfg, None, None
    candidates = checkpoint_candidates(latest)
    if not candidates:
        if env.is_main:
            print(f"--resume: no checkpoint at {latest}; starting a new run", file=sys.stderr)
        return cfg, None, None
    unreadable: list[Path] = []
    errors: list[str] = []
    for path in candidates:
        try:
            ckpt = load_checkpoint(path, cfg.command)
        except UnreadableCheckpoint as exc:
            unreadable.append(path)
            errors.append(str(exc))
            continue
        except ValueError as exc:
            raise ConfigError(f"--resume: {exc}") from None
        if env.is_main and path != latest:
            why = "; ".join(errors) if unreadable else f"there is no {latest}"
            print(
                f"--resume: warning: {why}; resuming from the previous checkpoint {path}",
                file=sys.stderr,
                flush=True,
            )
        saved = RunConfig.from_dict(ckpt.get("config"), where=f"--resume: {path}")
        return saved.resumed_by(cfg.runtime), ckpt, Resumed(path, unreadable)
    raise ConfigError("--resume: " + "; ".join(errors) + " (no readable checkpoint left)")


def _set_aside(paths: list[Path]) -> None:
    """Rename unreadable checkpoints to ``<name>.corrupt`` (kept for inspection), so the
    next save does not keep them as the previous checkpoint."""
    for path in paths:
        aside = path.with_name(path.name + ".corrupt")
        with contextlib.suppress(OSError):
            os.replace(path, aside)
            print(f"--resume: moved the unreadable {path.name} to {aside}", file=sys.stderr)


def _prepare_out(cfg: RunConfig) -> None:
    try:
        cfg.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out: cannot create {cfg.out}: {exc.strerror or exc}") from None
    if not cfg.out.is_dir():
        raise ConfigError(f"--out: {cfg.out} exists and is not a directory")


@contextlib.contextmanager
def _out_lock(cfg: RunConfig, env: DistEnv) -> Iterator[None]:
    """Rank 0 holds ``OUT/.lock`` for the block; every rank learns whether it got it
    (ConfigError naming the holder when another run has it)."""
    with contextlib.ExitStack() as stack:
        error: str | None = None
        if env.is_main:
            _prepare_out(cfg)
            try:
                stack.enter_context(lock_out_dir(cfg.out))
            except OutDirBusy as exc:
                error = str(exc)
        if env.distributed:
            flag = torch.tensor([0.0 if error else 1.0], device=env.device)
            torch.distributed.broadcast(flag, src=0)
            if error is None and flag.item() == 0.0:
                error = f"--out {cfg.out} is in use by another das run (rank 0 could not lock it)"
        if error is not None:
            raise ConfigError(error)
        yield


def interrupted_message(command: str, out: Path | None, argv: Sequence[str] | None) -> str:
    """What an interrupted (Ctrl-C) run prints: the checkpoint it keeps and how to resume."""
    if out is None or command == "evaluate":
        return f"das.{command}: interrupted"
    args = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in args:
        args.append("--resume")
    kept = checkpoint_candidates(Path(out) / "checkpoint.pt")
    if kept:
        where = f"the last complete checkpoint is {kept[0]}"
    elif next(Path(out).glob("*/*/checkpoint*.pt"), None) is not None:  # an ablation's runs
        where = f"the runs' last complete checkpoints are kept under {out}"
    else:
        where = f"no checkpoint was written yet in {out}"
    return (
        f"das.{command}: interrupted; {where}. Continue with:\n"
        f"  python -m das.{command} {' '.join(shlex.quote(a) for a in args)}"
    )


class Job(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, ckpt: dict[str, Any]) -> None: ...

    def run(self) -> Any: ...


def run_job(
    cfg: RunConfig,
    env: DistEnv | None,
    make: Callable[[RunConfig, DistEnv, dict[str, Any] | None], Job],
) -> Any:
    """Set up and run one job: process group and threads, the output directory and its
    lock (``OUT/.lock``, held until the job ends; ConfigError when another run holds it),
    resume (``--resume``), ``config.json`` (the run's RunConfig), then
    ``make(cfg, env, checkpoint)`` under the ops backend and determinism of
    ``cfg.runtime``, its checkpoint state loaded, and ``job.run()``. A full disk becomes a
    WriteFailure, a failed collective a DistributedFailure naming the rank."""
    with process(cfg.runtime.device, cfg.runtime.threads, env) as env:
        try:
            with _out_lock(cfg, env):
                cfg, ckpt, resumed = _resume(cfg, env)
                if resumed is not None and resumed.unreadable:
                    env.barrier()  # every rank has read its checkpoint
                    if env.is_main:
                        _set_aside(resumed.unreadable)
                if env.is_main:
                    _prepare_out(cfg)
                    text = json.dumps(cfg.to_dict(), indent=1) + "\n"
                    atomic_write_text(text, cfg.out / "config.json")
                with ops_backend(cfg.runtime.ops_backend), deterministic(cfg.runtime.deterministic):
                    job = make(cfg, env, ckpt)
                    if ckpt is not None:
                        job.load_state_dict(ckpt)
                    return job.run()
        except OSError as exc:
            if exc.errno not in _NO_ROOM:
                raise
            where = exc.filename or cfg.out
            raise WriteFailure(
                f"cannot write {where}: {exc.strerror}; the last complete checkpoint in "
                f"{cfg.out} is intact (--resume once there is room)",
                exc.errno,
            ) from exc
        except Exception as exc:
            failure = comm_failure(exc, env)
            if failure is None:
                raise
            raise failure from exc


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
