"""Standard augmentation and deterministic, sharded batch streams over an image set.

Every batch is a pure function of ``(seed, stream, data_epoch, batch_index)`` (order, crop,
flip, cutout), so a run resumed from a checkpoint sees exactly the batches an uninterrupted
one would. ``rank``/``world`` shard each epoch DistributedSampler-style. With
``num_workers > 0`` DataLoader worker processes read (decode) whole batches of uint8 images
ahead of time; the augmentation stays in the main process after them, seeded as without
workers, so workers on and off give the same batches bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from das.data.sets import DataError


def augment_batch(
    x: Tensor, gen: torch.Generator, pad: int = 0, flip: bool = False, cutout: int = 0
) -> Tensor:
    """Random crop with zero padding, horizontal flip, cutout on a float batch (B, C, H, W).

    Randomness comes from `gen` (CPU generator), so it is reproducible on any device.
    """
    B, _, H, W = x.shape
    dev = x.device
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (B,), generator=gen).to(dev)
        ox = torch.randint(0, 2 * pad + 1, (B,), generator=gen).to(dev)
        rows = (oy[:, None] + torch.arange(H, device=dev))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(W, device=dev))[:, None, None, :]
        bidx = torch.arange(B, device=dev)[:, None, None, None]
        cidx = torch.arange(x.shape[1], device=dev)[None, :, None, None]
        x = xp[bidx, cidx, rows, cols]
    if flip:
        m = (torch.rand(B, generator=gen) < 0.5).to(dev)
        x = torch.where(m[:, None, None, None], x.flip(-1), x)
    if cutout > 0:
        cy = torch.randint(0, H, (B,), generator=gen).to(dev)
        cx = torch.randint(0, W, (B,), generator=gen).to(dev)
        ys = torch.arange(H, device=dev)[None, :, None]
        xs = torch.arange(W, device=dev)[None, None, :]
        half = cutout // 2
        inside = (
            (ys >= cy[:, None, None] - half)
            & (ys < cy[:, None, None] - half + cutout)
            & (xs >= cx[:, None, None] - half)
            & (xs < cx[:, None, None] - half + cutout)
        )
        x = x * (~inside)[:, None].to(x.dtype)
    return x


def _gen(*keys: int) -> torch.Generator:
    """A CPU generator seeded by a hash of integer keys."""
    h = 0x9E3779B97F4A7C15
    for k in keys:
        h = (h ^ (int(k) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return torch.Generator().manual_seed(h & 0x7FFFFFFFFFFFFFFF)


class _Failed:
    """A DataError raised in a worker, handed to the main process as a value."""

    def __init__(self, message: str) -> None:
        self.message = message


class _Fetch(Dataset):
    """One item = one batch: ``data.gather(indices)``."""

    def __init__(self, data) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, indices: list[int]):
        try:
            return self.data.gather(indices)
        except DataError as exc:
            return _Failed(str(exc))


class _Plan:
    """The index lists of batches ``start..stop-1`` of one epoch order (sampler of _Fetch)."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.order = torch.zeros(0, dtype=torch.int64)
        self.start = self.stop = 0

    def __iter__(self) -> Iterator[list[int]]:
        bs = self.batch_size
        for i in range(self.start, self.stop):
            yield self.order[i * bs : (i + 1) * bs].tolist()


class BatchLoader:
    """Batches of one image set: normalised float (B, C, H, W) on `device` and labels.

    ``epoch_batches(epoch)`` is a pure function of ``(seed, stream, epoch)``; ``train=True``
    shuffles and augments (crop padding ``pad``, ``flip``, ``cutout``), else the order is
    fixed and nothing is random. With ``world > 1`` each rank takes a DistributedSampler-
    style shard (training shards are padded to equal length; evaluation shards are not).

    ``num_workers > 0``: a DataLoader with that many persistent worker processes reads the
    uint8 batches ahead (``prefetch`` batches per worker) whenever batches are asked for in
    order, from ``epoch_batches``, a ``BatchStream`` or ``batch(epoch, i, epoch_order(epoch))``
    with consecutive ``i``; any other request is read in the main process. ``pin_memory``
    (default: on CUDA with workers) pins the batches for the copy to the device.
    """

    def __init__(
        self,
        data,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        train: bool = True,
        seed: int = 0,
        stream: int = 0,
        pad: int = 0,
        flip: bool = False,
        cutout: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
        num_workers: int = 0,
        pin_memory: bool | None = None,
        prefetch: int = 2,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if len(data) == 0:
            raise DataError("the dataset split is empty")
        self.data, self.batch_size, self.train = data, batch_size, train
        self.seed, self.stream, self.pad, self.flip, self.cutout = seed, stream, pad, flip, cutout
        self.drop_last, self.rank, self.world = drop_last, rank, world
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.num_workers, self.prefetch = num_workers, prefetch
        if pin_memory is None:
            pin_memory = self.device.type == "cuda" and num_workers > 0
        self.pin_memory = bool(pin_memory) and self.device.type == "cuda"
        self._order: tuple[int, Tensor] | None = None
        self._dl: DataLoader | None = None
        self._it: Iterator | None = None
        self._pos: tuple[int, int] | None = None  # (epoch, i) the prefetch iterator yields next

    def epoch_order(self, epoch: int) -> Tensor:
        """The indices into ``data`` this rank reads in `epoch`, in order (batch i is
        ``[i * batch_size, (i + 1) * batch_size)`` of it). The same tensor while `epoch` is
        the last one asked for."""
        if self._order is not None and self._order[0] == epoch:
            return self._order[1]
        n = len(self.data)
        if not self.train:
            idx = torch.arange(n)[self.rank :: self.world]
        else:
            idx = torch.randperm(n, generator=_gen(self.seed, self.stream, epoch, 17))
            if self.world > 1:
                total = -(-n // self.world) * self.world
                idx = torch.cat([idx, idx[: total - n]]) if total > n else idx
                idx = idx[self.rank :: self.world]
        self._order = (epoch, idx)
        return idx

    _indices = epoch_order  # the old private name (das.train uses it)

    def __len__(self) -> int:
        n = len(self.data)
        if self.train:
            n = -(-n // self.world) if self.world > 1 else n
        else:
            n = len(range(self.rank, n, self.world))
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _read(self, epoch: int, i: int, idx: Tensor) -> tuple[Tensor, Tensor]:
        """The uint8 images and labels of batch i: from the workers when they are ahead."""
        own = self._order is not None and self._order[0] == epoch and idx is self._order[1]
        if not (self.num_workers and own):
            x, y = self.data.gather(idx[i * self.batch_size : (i + 1) * self.batch_size])
            return x, y
        if self._pos != (epoch, i):
            if self._dl is None:
                self._plan = _Plan(self.batch_size)
                self._dl = DataLoader(
                    _Fetch(self.data),
                    batch_size=None,
                    sampler=self._plan,
                    num_workers=self.num_workers,
                    pin_memory=self.pin_memory,
                    prefetch_factor=self.prefetch,
                    persistent_workers=True,
                    generator=torch.Generator().manual_seed(0),  # not the global RNG
                )
            self._plan.order, self._plan.start, self._plan.stop = idx, i, len(self)
            self._it = iter(self._dl)
        out = next(self._it)  # type: ignore[arg-type]
        self._pos = (epoch, i + 1)
        if isinstance(out, _Failed):
            self._pos = None
            raise DataError(out.message)
        return out[0], out[1]

    def batch(self, epoch: int, i: int, indices: Tensor | None = None) -> tuple[Tensor, Tensor]:
        idx = self.epoch_order(epoch) if indices is None else indices
        xb, yb = self._read(epoch, i, idx)
        x = xb.to(self.device, non_blocking=True).float().div_(255.0)
        y = yb.to(self.device, non_blocking=True)
        if self.train:
            gen = _gen(self.seed, self.stream, epoch, i, self.rank, 29)
            x = augment_batch(x, gen, self.pad, self.flip, 0)
        x = (x - self.mean) / self.std
        if self.train and self.cutout:
            x = augment_batch(
                x, _gen(self.seed, self.stream, epoch, i, self.rank, 31), cutout=self.cutout
            )
        return x, y

    def epoch_batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches `start`.. of `epoch`."""
        idx = self.epoch_order(epoch)
        for i in range(start, len(self)):
            yield self.batch(epoch, i, idx)

    def close(self) -> None:
        """Stop the worker processes (they stop with the loader anyway)."""
        self._dl = self._it = self._pos = None


class BatchStream:
    """An endless iterator over a BatchLoader that moves to the next data epoch when one
    ends (the search's persistent iterators). Its position is ``state()``/``load_state()``."""

    def __init__(self, loader: BatchLoader, epoch: int = 0, index: int = 0) -> None:
        self.loader, self.epoch, self.index = loader, epoch, index
        self._idx: Tensor | None = None
        self._len = len(loader)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        if self.index >= self._len:
            self.epoch, self.index, self._idx = self.epoch + 1, 0, None
        if self._idx is None:
            self._idx = self.loader.epoch_order(self.epoch)
        out = self.loader.batch(self.epoch, self.index, self._idx)
        self.index += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict) -> None:
        self.epoch, self.index, self._idx = int(state["epoch"]), int(state["index"]), None
