"""The search and train jobs of ``--task segmentation``: :class:`SegSearcher` (a
:class:`das.search.Searcher`) and :class:`SegTrainer` (a :class:`das.train.Trainer`) with the
segmentation data, network, loss and metric of :mod:`das.segtask`. Checkpoints, resume,
DDP, the bi-level steps (first or second order), perturbation selection and the outputs'
layout are the classification jobs'; the selection score and the logged validation metric
are mIoU (ties broken by the loss), and the reports add mIoU curves and per-sample
prediction pictures (image | truth | each frame's prediction | un-warped prediction).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from das import segtask, session
from das.cell import Genotype
from das.config import RunConfig
from das.engine import Meter, cosine_lr, make_sgd, set_lr
from das.metrics import ConfusionMatrix
from das.runtime import (
    DistEnv,
    all_reduce_,
    broadcast_buffers,
    seed_everything,
    synchronize,
)
from das.search import Searcher, StepStats, _eval_subset
from das.segdata import IGNORE_INDEX
from das.segreport import write_seg_predictions, write_seg_search_report
from das.select import edge_order
from das.train import Trainer
from das.variants import VIDEO_VARIANTS

__all__ = ["SegSearcher", "SegTrainer"]


def _halves(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """The training items split in half (seeded permutation, as das.search): weights, arch."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    return perm[: n // 2].sort().values, perm[n // 2 :].sort().values


def _miou(confusion: ConfusionMatrix, env: DistEnv) -> float:
    if env.distributed:
        confusion.all_reduce()
    value = confusion.miou
    return float("nan") if value != value else value


class SegSearcher(Searcher):
    """The bi-level search on a segmentation set: arch step on a batch of the arch half,
    weight step on the weight half, cross-entropy on the un-warped logits (+ aux)."""

    score_name = "mIoU"

    def __init__(self, cfg: RunConfig, env: DistEnv) -> None:  # noqa: D107
        assert cfg.search is not None and cfg.cell is not None and cfg.task is not None
        self.cfg, self.env = cfg, env
        self.settings = s = cfg.search
        self.out, self.dev = cfg.out, env.device
        self.progress = env.is_main and not cfg.runtime.no_progress
        self.amp = cfg.runtime.amp
        self.aux_weight = cfg.task.aux_weight
        self.bundle = b = segtask.load_seg_bundle(cfg)
        w_idx, a_idx = _halves(len(b.train), cfg.seed)

        def loader(indices: Tensor, stream: int) -> segtask.SegLoader:
            return segtask.SegLoader(
                b.train, s.batch_size, b.mean, b.std, True, cfg.seed, stream, indices,
                env.rank, env.world, env.device,
            )  # fmt: skip

        self.w_loader, self.a_loader = loader(w_idx, 0), loader(a_idx, 1)
        if not len(self.w_loader) or not len(self.a_loader):
            raise ValueError("too few training images for one batch per half")
        # evaluation: a fixed seeded subset of the arch half, whole images, unaugmented
        picked = _eval_subset(_Indices(a_idx), s.eval_images, cfg.seed).indices
        self.eval_loader = segtask.SegLoader(
            b.train, segtask.EVAL_BATCH, b.mean, b.std, False, indices=picked,
            rank=env.rank, world=env.world, device=env.device,
        )  # fmt: skip
        self.w_stream = segtask.SegStream(self.w_loader)
        self.a_stream = segtask.SegStream(self.a_loader)
        self.steps_per_epoch = s.steps_per_epoch or len(self.w_loader)
        self.total_steps = self.steps_per_epoch * s.epochs

        seed_everything(cfg.seed)
        self.network = segtask.seg_search_network(cfg, b).to(self.dev)
        self.cell = self.network.cell
        self.backbone = segtask.SegTrunk(self.network)  # backbone + heads
        self.ddp_backbone = session.distribute(self.backbone, env)
        self.w_params = list(self.backbone.parameters())
        self.a_params = self.cell.arch_parameters()
        self.w_opt = make_sgd(self.w_params, s.w_lr, s.w_momentum, s.w_wd)
        self.a_opt = torch.optim.Adam(
            self.a_params, lr=s.a_lr, betas=(s.a_beta1, s.a_beta2), weight_decay=s.a_wd
        )
        self.epoch = 0
        self.stage = "search"
        self.log: list[dict[str, Any]] = []
        self.records = []
        self.order = edge_order(len(self.cell.edges), cfg.seed, s.select_order)
        self.seconds = {"search": 0.0, "select": 0.0}
        self._confusion = {k: ConfusionMatrix(b.num_classes) for k in ("train", "arch")}
        self._arch_y: Tensor | None = None

    # -- steps ------------------------------------------------------------------------
    def _loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The arch batch's loss through the whole network (cell included); the second value
        counts correct pixels (the arch half's confusion matrix is updated)."""
        result = self.network(x)
        loss = segtask.seg_loss(result["out"], result.get("aux"), y, self.aux_weight)
        labels = result["out"].detach().argmax(1)
        if y is self._arch_y:  # not the unrolled step's weight-batch losses (order 2)
            self._confusion["arch"].update(labels, y)
        return loss, torch.tensor(segtask.pixel_counts(labels, y)[0])

    def _weight_step(self, x: Tensor, y: Tensor) -> tuple[float, int, int]:
        s = self.settings
        return segtask.seg_weight_step(
            self.network, self.ddp_backbone, self.w_opt, x, y, self.aux_weight, s.grad_clip,
            self.amp, self._confusion["train"],
        )  # fmt: skip

    def step(self, step: int, arch: bool = True) -> StepStats:
        """As :meth:`Searcher.step`; the counts are pixels (labelled / correct)."""
        s = self.settings
        set_lr(self.w_opt, cosine_lr(step, self.total_steps, s.w_lr, s.w_lr_min))
        xt, yt = next(self.w_stream)
        xv, yv = next(self.a_stream)
        self._arch_y = yv
        synchronize(self.dev)
        t0 = time.perf_counter()
        a_loss, a_correct, a_n = float("nan"), 0, 0
        if arch:
            a_loss, a_correct = self.arch_step(xt, yt, xv, yv)
            a_n = int((yv != IGNORE_INDEX).sum())
        synchronize(self.dev)
        t1 = time.perf_counter()
        w_loss, w_correct, w_n = self._weight_step(xt, yt)
        synchronize(self.dev)
        t2 = time.perf_counter()
        return StepStats(a_loss, a_correct, a_n, w_loss, w_correct, w_n, t1 - t0, t2 - t1)

    def train_epoch(self) -> dict[str, Any]:
        for c in self._confusion.values():
            c.matrix.zero_()
        stats = super().train_epoch()
        arch_on = self.epoch >= self.settings.warmup_epochs
        stats["train_miou"] = _miou(self._confusion["train"], self.env)
        stats["arch_miou"] = _miou(self._confusion["arch"], self.env) if arch_on else float("nan")
        return stats

    def _finetune(self, _: int) -> None:
        s = self.settings
        set_lr(self.w_opt, s.finetune_lr)
        for _ in range(int(round(s.finetune_epochs * self.steps_per_epoch))):
            self._weight_step(*next(self.w_stream))

    def evaluate(self, images: str = "eval") -> dict[str, Any]:
        """mIoU on the ``--eval-images`` subset, for selection too (``images`` is ignored:
        mIoU has no per-image score, so selection records carry no SEs)."""
        broadcast_buffers(self.network, self.env)
        return segtask.seg_evaluate(
            self.network,
            self.eval_loader.epoch_batches(0),
            self.env,
            self.bundle.num_classes,
            self.amp,
        )

    def _val_fields(self, ev: dict[str, Any]) -> dict[str, Any]:
        return {"val_loss": ev["loss"], "val_miou": ev["acc"], "val_pixel_acc": ev["pixel_acc"]}

    def write_report(self, result: dict[str, Any]) -> None:
        write_seg_search_report(self, result)


class _Indices:
    """Just enough of an ImageSet for das.search._eval_subset."""

    def __init__(self, indices: Tensor) -> None:
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, pick: Tensor) -> _Indices:
        return _Indices(self.indices[pick])


class SegTrainer(Trainer):
    """One segmentation training run of one variant/fusion (``run()`` trains, evaluates on
    the whole val split and writes train_log, curves.png, predictions.png, result.json)."""

    def __init__(  # noqa: D107
        self,
        cfg: RunConfig,
        env: DistEnv,
        bundle: segtask.SegBundle | None = None,
        genotype: Genotype | None = None,
    ) -> None:
        assert cfg.train is not None and cfg.task is not None
        self.cfg, self.env, self.genotype = cfg, env, genotype
        self.settings = t = cfg.train
        self.aux_weight = cfg.task.aux_weight
        self.bundle = b = bundle or segtask.load_seg_bundle(cfg)
        self.out, self.dev = cfg.out, env.device
        self.progress = env.is_main and not cfg.runtime.no_progress
        self.amp = cfg.runtime.amp
        self.meta = session.DataMeta(b.num_classes, 3, b.image_size, b.mean, b.std)
        train = copy.copy(b.train)  # a shared bundle (--ablation) was made for another seed
        train.seed = cfg.seed
        self.train_loader = segtask.SegLoader(
            train, t.batch_size, b.mean, b.std, True, cfg.seed, 2,
            rank=env.rank, world=env.world, device=env.device,
        )  # fmt: skip
        self.val_loader = segtask.SegLoader(
            b.val, segtask.EVAL_BATCH, b.mean, b.std, False,
            rank=env.rank, world=env.world, device=env.device,
        )  # fmt: skip
        self.steps_per_epoch = len(self.train_loader)
        total = self.steps_per_epoch * t.epochs
        self.total_steps = min(total, t.max_steps) if t.max_steps else total

        seed_everything(cfg.seed)
        self.network = segtask.seg_variant_network(
            cfg, genotype, b.num_classes, b.aspect, (b.mean, b.std)
        ).to(self.dev)
        seed_everything(cfg.seed * 1000 + 1 + env.rank)  # per-rank randomness of the cells
        self.backbone = segtask.SegTrunk(self.network)
        self.ddp_backbone = session.distribute(self.backbone, env)
        self.opt = make_sgd(
            self.backbone.parameters(), t.lr, t.momentum, t.wd, nesterov=t.momentum > 0
        )
        self.epoch = self.step = 0
        self.log: list[dict[str, Any]] = []
        self.seconds = 0.0

    def evaluate(self) -> dict[str, Any]:
        broadcast_buffers(self.network, self.env)
        return segtask.seg_evaluate(
            self.network,
            self.val_loader.epoch_batches(0),
            self.env,
            self.bundle.num_classes,
            self.amp,
        )

    def train_epoch(self) -> dict[str, Any]:
        t = self.settings
        meter, confusion = Meter(), ConfusionMatrix(self.bundle.num_classes)
        n_steps = min(self.steps_per_epoch, self.total_steps - self.step)
        t_steps = 0.0
        label = t.variant + (f"/{self.cfg.model.fusion}" if t.variant in VIDEO_VARIANTS else "")
        bar = tqdm(
            range(n_steps),
            desc=f"{label} {self.epoch + 1}/{t.epochs}",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        self.network.train()
        for i, (x, y) in zip(bar, self.train_loader.epoch_batches(self.epoch)):
            set_lr(self.opt, cosine_lr(self.step, self.total_steps, t.lr, t.lr_min))
            t0 = time.perf_counter()
            loss, correct, n = segtask.seg_weight_step(
                self.network, self.ddp_backbone, self.opt, x, y, self.aux_weight, t.grad_clip,
                self.amp, confusion,
            )  # fmt: skip
            synchronize(self.dev)
            t_steps += time.perf_counter() - t0
            self.step += 1
            meter.update(loss, correct, n)
            bar.set_postfix(loss=f"{meter.loss:.3f}", s_step=f"{t_steps / (i + 1):.3f}")
        bar.close()
        totals = torch.tensor([meter.loss_sum, meter.correct, meter.n], dtype=torch.float64)
        all_reduce_([totals], self.env, average=False)
        return {
            "step": self.step,
            "lr": self.opt.param_groups[0]["lr"],
            "train_loss": totals[0].item() / max(totals[2].item(), 1),
            "train_pixel_acc": totals[1].item() / max(totals[2].item(), 1),
            "train_miou": _miou(confusion, self.env),
            "sec_per_step": t_steps / max(n_steps, 1),
        }

    METRIC = ("mIoU", "miou")

    def val_fields(self, ev: dict[str, Any]) -> dict[str, Any]:
        return {"val_miou": ev["miou"], "val_pixel_acc": ev["pixel_acc"]}

    def write_extras(self) -> None:
        images, masks = segtask.first_items(self.bundle.val, 4)
        write_seg_predictions(
            self.network, images, masks, self.bundle, self.out / "predictions.png"
        )

    def result(self, final: dict[str, Any]) -> dict[str, Any]:
        t = self.settings
        video = t.variant in VIDEO_VARIANTS
        mious = [r["val_miou"] for r in self.log if "val_miou" in r]
        steps = [r["sec_per_step"] for r in self.log]
        ev = segtask.json_ready(final)
        return {
            "variant": t.variant,
            "seed": self.cfg.seed,
            "fusion": self.cfg.model.fusion if video else "none",
            "frames": self.network.backbone.frames if video else 1,
            "genotype": list(self.genotype.ops) if self.genotype else None,
            "params": self.params,
            "epochs": self.epoch,
            "steps": self.step,
            "val_miou": final["miou"],
            "val_pixel_acc": final["pixel_acc"],
            "val_acc": final["pixel_acc"],
            "val_loss": final["loss"],
            "val_class_iou": dict(zip(self.bundle.classes, ev["class_iou"])),
            "best_val_miou": max(mious + [final["miou"]]),
            "train_miou": self.log[-1]["train_miou"] if self.log else None,
            "train_seconds": self.seconds,
            "sec_per_step": sum(steps) / max(len(steps), 1),
            "data": self.bundle.describe(),
        }
