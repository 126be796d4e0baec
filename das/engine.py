"""Training-step and evaluation helpers shared by search, selection and train.

A network is split into ``video(x)`` (the cell: image -> frames, with no trainable weights
in the weight step) and a ``backbone`` (possibly DDP-wrapped). The weight step builds the
video without autograd and trains the backbone; the architecture step (search only) lives
in :mod:`das.search`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from das.runtime import DistEnv, all_reduce_

__all__ = [
    "Meter",
    "autocast",
    "cosine_lr",
    "evaluate",
    "gather_cat",
    "loss_and_correct",
    "make_sgd",
    "set_lr",
    "weight_step",
]


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA when `enabled` (no loss scaling needed), else nothing."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cosine_lr(step: int, total: int, base: float, minimum: float = 0.0) -> float:
    """Cosine annealing from `base` (step 0) to `minimum` (step `total`)."""
    frac = min(max(step, 0), max(total, 1)) / max(total, 1)
    return minimum + 0.5 * (base - minimum) * (1.0 + math.cos(math.pi * frac))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def make_sgd(
    params: Iterable[nn.Parameter],
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 3e-4,
    nesterov: bool = False,
) -> torch.optim.SGD:
    return torch.optim.SGD(
        list(params), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
    )


def loss_and_correct(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    loss = F.cross_entropy(logits.float(), y)
    return loss, (logits.argmax(dim=1) == y).sum()


def weight_step(
    video_fn: Callable[[Tensor], Tensor],
    backbone: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    clip: float = 0.0,
    amp: bool = False,
) -> tuple[float, int]:
    """One SGD step of the backbone on (x, y): returns (loss, number correct)."""
    with torch.no_grad():
        video = video_fn(x)
    with autocast(x.device, amp):
        logits = backbone(video)
    loss, correct = loss_and_correct(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    return float(loss.detach()), int(correct)


@dataclass
class Meter:
    """Running mean loss and accuracy over batches."""

    loss_sum: float = 0.0
    correct: int = 0
    n: int = 0

    def update(self, loss: float, correct: int, n: int) -> None:
        self.loss_sum += loss * n
        self.correct += correct
        self.n += n

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.n, 1)

    @property
    def acc(self) -> float:
        return self.correct / max(self.n, 1)


def gather_cat(t: Tensor, env: DistEnv) -> Tensor:
    """The 1-D tensors `t` of all ranks concatenated in rank order (on every rank); `t`
    itself when alone. Lengths may differ between ranks."""
    if not env.distributed:
        return t
    import torch.distributed as dist

    local = t.reshape(-1).to(env.device, torch.float64)
    sizes = [torch.zeros(1, dtype=torch.int64, device=env.device) for _ in range(env.world)]
    dist.all_gather(sizes, torch.tensor([local.numel()], device=env.device))
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros(longest, dtype=torch.float64, device=env.device)
    padded[: local.numel()] = local
    parts = [torch.empty_like(padded) for _ in range(env.world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)]).cpu()


@torch.no_grad()
def evaluate(
    network: nn.Module,
    batches: Iterator[tuple[Tensor, Tensor]],
    env: DistEnv,
    amp: bool = False,
    chunk: int | None = None,
    per_image: bool = False,
) -> dict[str, Any]:
    """Loss/accuracy of `network` (eval mode, restored afterwards) summed over all ranks.
    ``chunk``: run the network on at most that many images at once (the same logits).
    ``per_image``: also ``correct`` and ``losses``, float64 CPU tensors of one value per
    image (1/0, cross-entropy) in batch order, the ranks' concatenated in rank order."""
    was_training = network.training
    network.eval()
    t0 = time.perf_counter()
    totals = torch.zeros(3, dtype=torch.float64)
    correct_parts: list[Tensor] = []
    loss_parts: list[Tensor] = []
    try:
        for x, y in batches:
            with autocast(x.device, amp):
                parts = x.split(chunk) if chunk else (x,)
                logits = torch.cat([network(part) for part in parts])
            loss, correct = loss_and_correct(logits, y)
            totals += torch.tensor(
                [float(loss) * len(y), float(correct), len(y)], dtype=torch.float64
            )
            if per_image:
                losses = F.cross_entropy(logits.float(), y, reduction="none")
                loss_parts.append(losses.double().cpu())
                correct_parts.append((logits.argmax(dim=1) == y).double().cpu())
    finally:
        network.train(was_training)
    all_reduce_([totals], env, average=False)
    n = max(totals[2].item(), 1.0)
    result: dict[str, Any] = {
        "loss": totals[0].item() / n,
        "acc": totals[1].item() / n,
        "n": int(totals[2].item()),
        "seconds": time.perf_counter() - t0,
    }
    if per_image:
        empty = torch.zeros(0, dtype=torch.float64)
        result["correct"] = gather_cat(torch.cat(correct_parts) if correct_parts else empty, env)
        result["losses"] = gather_cat(torch.cat(loss_parts) if loss_parts else empty, env)
    return result
