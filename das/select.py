"""Perturbation-based op selection (DARTS-PT) for a searched DAS cell.

For each edge (in a seeded random order): evaluate the supernet's validation accuracy, then
mask each op of that edge in turn (weight 0, no renormalisation) and re-evaluate; keep the
op whose removal hurts accuracy most (ties, drops within 1e-9: the larger loss increase,
then the larger softmax weight) and discretise the edge to it (one-hot). Optionally fine-tune
the weights between edges.

When the evaluation reports per-image correctness and loss (classification), each drop and
loss increase gets the standard error of its paired per-image differences (base and masked
network on the same images), and the decision a margin: best drop minus runner-up drop,
with the SE of the per-image best-vs-runner-up differences. The decision is *within noise*
when the margin is below 2 SE (or zero). Segmentation (mIoU) has no per-image score: its
records carry no SEs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor

from das.cell import DASCell, Genotype

__all__ = ["EdgeRecord", "choose", "edge_order", "paired_se", "select_ops"]

TIE = 1e-9  # drops (and loss increases) closer than this are equal


@dataclass
class EdgeRecord:
    """What selection measured on one edge."""

    edge: int
    src: int
    dst: int
    base_acc: float
    op_acc: dict[str, float]  # accuracy with that op masked
    weights: dict[str, float]  # softmax weights before discretisation
    chosen: str
    base_loss: float = float("nan")
    op_loss: dict[str, float] | None = None  # loss with that op masked
    # paired per-image statistics (None: not measured, segmentation or an older record)
    n_images: int | None = None
    drop_se: dict[str, float] | None = None  # SE of each accuracy drop
    loss_rise_se: dict[str, float] | None = None  # SE of each loss increase
    runner_up: str | None = None  # the op ranked second
    margin: float | None = None  # drop(chosen) - drop(runner_up)
    margin_se: float | None = None  # SE of that paired difference
    within_noise: bool | None = None  # margin < 2 * margin_se (or margin 0)

    @property
    def drop(self) -> dict[str, float]:
        return {op: self.base_acc - acc for op, acc in self.op_acc.items()}

    @property
    def loss_rise(self) -> dict[str, float] | None:
        if self.op_loss is None:
            return None
        return {op: loss - self.base_loss for op, loss in self.op_loss.items()}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["drop"] = self.drop
        d["loss_rise"] = self.loss_rise
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EdgeRecord:
        """From :meth:`to_dict` (records written before the SE fields load with None)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def edge_order(n_edges: int, seed: int, mode: str = "random") -> list[int]:
    """The order edges are selected in: ``random`` (seeded, as DARTS-PT) or ``sequential``."""
    order = list(range(n_edges))
    if mode == "random":
        random.Random(seed).shuffle(order)
    elif mode != "sequential":
        raise ValueError(f"selection order must be 'random' or 'sequential', got {mode!r}")
    return order


Evaluate = Callable[[], dict[str, Any]]  # -> {"acc", "loss"[, "correct", "losses"]}


def paired_se(a: Tensor, b: Tensor) -> tuple[float, float]:
    """Mean and standard error of the per-image differences ``a - b`` (paired samples):
    ``(mean(d), sd(d) / sqrt(n))``, sd with n - 1 (0 for one image)."""
    d = (a.double() - b.double()).reshape(-1)
    n = d.numel()
    if n == 0:
        return float("nan"), float("nan")
    sd = float(d.std(correction=1)) if n > 1 else 0.0
    return float(d.mean()), sd / math.sqrt(n)


def _ahead(i: int, j: int, drops: list[float], rises: list[float], weights: list[float]) -> bool:
    """Whether op `i` ranks above op `j`: larger drop, then larger loss increase (drops
    within TIE), then larger weight."""
    if abs(drops[i] - drops[j]) > TIE:
        return drops[i] > drops[j]
    if abs(rises[i] - rises[j]) > TIE:
        return rises[i] > rises[j]
    return weights[i] > weights[j]


def choose(drops: list[float], rises: list[float], weights: list[float]) -> list[int]:
    """Op indices ranked best first (the kept op, then the runner-up, ...)."""
    ranked: list[int] = []
    for i in range(len(drops)):
        at = next((p for p, j in enumerate(ranked) if _ahead(i, j, drops, rises, weights)), None)
        ranked.insert(len(ranked) if at is None else at, i)
    return ranked


def _confidence(base: dict[str, Any], masked: list[dict[str, Any]], ranked: list[int]) -> dict:
    """The paired SE fields of an EdgeRecord, or {} without per-image results."""
    if "correct" not in base or any("correct" not in m for m in masked):
        return {}
    ops_se = [paired_se(base["correct"], m["correct"])[1] for m in masked]
    rise_se = [paired_se(m["losses"], base["losses"])[1] for m in masked]
    out: dict[str, Any] = {"n_images": int(base["correct"].numel())}
    out["drop_se"], out["loss_rise_se"] = ops_se, rise_se
    if len(ranked) > 1:
        best, second = masked[ranked[0]], masked[ranked[1]]
        margin, se = paired_se(second["correct"], best["correct"])
        out.update(
            runner_up=ranked[1],
            margin=margin,
            margin_se=se,
            within_noise=bool(margin < 2 * se or abs(margin) <= TIE),
        )
    return out


@torch.no_grad()
def _measure(cell: DASCell, edge: int, evaluate: Evaluate) -> tuple[dict, list[dict]]:
    base = evaluate()
    masked = []
    for k in range(len(cell.ops)):
        saved = cell.mask[edge, k].item()
        cell.mask[edge, k] = 0.0
        try:
            masked.append(evaluate())
        finally:
            cell.mask[edge, k] = saved
    return base, masked


def select_ops(
    cell: DASCell,
    evaluate: Evaluate,
    order: list[int],
    records: list[EdgeRecord] | None = None,
    finetune: Callable[[int], None] | None = None,
    on_edge: Callable[[list[EdgeRecord]], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[Genotype, list[EdgeRecord]]:
    """Discretise every edge of `cell` by perturbation; returns the genotype and records.

    `evaluate()` -> ``{"acc", "loss"}`` on validation data of the network holding `cell`.
    `records` from an interrupted run are skipped (their edges must already be fixed in
    `cell`). `finetune(i)` runs after the i-th selected edge; `on_edge(records)` after each
    edge (checkpointing).
    """
    records = list(records or [])
    done = {r.edge for r in records}
    for e in order:
        if e in done:
            continue
        if int(cell.fixed[e]) >= 0:
            raise ValueError(f"edge {e} is already fixed but has no selection record")
        weights = cell.edge_weights()[e].tolist()
        base, masked = _measure(cell, e, evaluate)
        drops = [base["acc"] - m["acc"] for m in masked]
        rises = [m["loss"] - base["loss"] for m in masked]
        ranked = choose(drops, rises, weights)
        k = ranked[0]
        conf = _confidence(base, masked, ranked)
        ops = list(cell.ops)
        for key in ("drop_se", "loss_rise_se"):
            if key in conf:
                conf[key] = dict(zip(ops, conf[key]))
        if "runner_up" in conf:
            conf["runner_up"] = ops[conf["runner_up"]]
        src, dst = cell.edges[e]
        rec = EdgeRecord(
            e,
            src,
            dst,
            base["acc"],
            {op: m["acc"] for op, m in zip(ops, masked)},
            dict(zip(ops, weights)),
            ops[k],
            base["loss"],
            {op: m["loss"] for op, m in zip(ops, masked)},
            **conf,
        )
        records.append(rec)
        cell.fix_edge(e, k)
        if progress is not None:
            progress(f"edge {e} ({src}->{dst}): keep {ops[k]} ({describe(rec)})")
        if finetune is not None:
            finetune(len(records))
        if on_edge is not None:
            on_edge(records)
    return cell.genotype(), records


def describe(rec: EdgeRecord) -> str:
    """One line of what decided an edge: base score, the kept op's drop (± SE) and the margin
    over the runner-up (± SE, "within noise" when below 2 SE)."""
    se = f" ± {rec.drop_se[rec.chosen]:.4f}" if rec.drop_se else ""
    text = f"acc {rec.base_acc:.4f}, drop if removed {rec.drop[rec.chosen]:+.4f}{se}"
    if rec.margin is not None and rec.margin_se is not None:
        text += (
            f"; margin over {rec.runner_up} {rec.margin:+.4f} ± {rec.margin_se:.4f} "
            f"on {rec.n_images} images"
        )
        text += ": within noise" if rec.within_noise else ": above 2 SE"
    return text
