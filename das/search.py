"""``python -m das.search``: bi-level DARTS search of the DAS cell, then perturbation selection.

Per step (first order, default): Adam on the architecture (tau, and magnitudes with
``--learn-magnitudes``) on a batch of the architecture half of the training set, then SGD
on the backbone weights on a batch of the weight half. ``--order 2`` replaces the arch
gradient by DARTS' unrolled one (finite-difference Hessian-vector product). Both halves are
read through persistent streams whose batches are pure functions of (seed, epoch, index),
so ``--resume`` from the per-epoch checkpoint reproduces an uninterrupted run.

Outputs in ``--out``: ``genotype.json``, ``search_log.{csv,json}`` (per epoch: losses,
accuracies, seconds per step, tau and softmax weights per edge), ``selection.json``,
``report.md`` with ``tau.png``, ``selection.png``, ``curves.png``, ``video.png`` (the
genotype's frames of four validation images), ``config.json`` and ``checkpoint.pt``
(atomic, every epoch and every selected edge). Under ``torchrun`` only rank 0 writes;
``--batch-size`` is per process.

``--select-images`` (default: all of the arch half, at most 10,000) is what selection scores
each masked op on, with paired per-image standard errors (:mod:`das.select`);
``--eval-images`` (256) only the per-epoch supernet accuracy. ``--seeds 0,1,2`` runs the
search once per seed and writes their consensus (:mod:`das.consensus`).

``--method dra`` searches a Differentiable RandAugment policy instead
(:mod:`das.dra_search`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from das import cli, session
from das.cell import Genotype
from das.config import RunConfig
from das.data import BatchStream, DataBundle, ImageSet
from das.engine import Meter, autocast, cosine_lr, evaluate, make_sgd, set_lr, weight_step
from das.report import write_log, write_search_report
from das.runtime import (
    DistEnv,
    all_reduce_,
    broadcast_buffers,
    fault_point,
    seed_everything,
    set_rng_state,
    synchronize,
)
from das.select import EdgeRecord, edge_order, select_ops

__all__ = ["Searcher", "StepStats", "main", "run_search"]


# ----------------------------------------------------------------------------- searcher


def _halves(bundle: DataBundle, seed: int) -> tuple[ImageSet, ImageSet]:
    """The training set split in half (seeded permutation): weights half, arch half."""
    n = len(bundle.train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    return bundle.train.subset(perm[: n // 2].sort().values), bundle.train.subset(
        perm[n // 2 :].sort().values
    )


SELECT_CAP = 10_000  # most images perturbation selection scores on


def select_count(n_arch: int, select_images: int) -> int:
    """Images selection scores on: ``--select-images`` (0 = all of the arch half), at most
    SELECT_CAP."""
    return min(select_images or n_arch, n_arch, SELECT_CAP)


def _eval_subset(a_set: ImageSet, n_eval: int, seed: int) -> ImageSet:
    """A fixed seeded subset of `n_eval` images of the arch half (0 or more: all of it)."""
    if not n_eval or n_eval >= len(a_set):
        return a_set
    pick = torch.randperm(len(a_set), generator=torch.Generator().manual_seed(seed))
    return a_set.subset(pick[:n_eval].sort().values)


@dataclass
class StepStats:
    """What one search step did: losses and correct counts of the arch and weight batches
    (arch_n = 0 when the arch step was skipped) and the seconds of each part."""

    arch_loss: float
    arch_correct: int
    arch_n: int
    weight_loss: float
    weight_correct: int
    weight_n: int
    sec_arch: float
    sec_weight: float


class Searcher:
    """State and steps of one search; ``run()`` does search + selection + outputs."""

    score_name = "acc"  # what evaluate()["acc"] is (selection ranks by it)

    def __init__(self, cfg: RunConfig, env: DistEnv, bundle: DataBundle | None = None) -> None:
        assert cfg.search is not None and cfg.cell is not None
        self.cfg, self.env = cfg, env
        self.settings = s = cfg.search
        self.out = cfg.out
        self.dev = env.device
        self.progress = env.is_main and not cfg.runtime.no_progress
        self.amp = cfg.runtime.amp
        self.bundle = bundle or session.load_bundle(cfg.data)
        w_set, a_set = _halves(self.bundle, cfg.seed)
        self.w_loader = session.train_loader(cfg, self.bundle, w_set, 0, env)
        self.a_loader = session.train_loader(cfg, self.bundle, a_set, 1, env)
        self.eval_loader, self.select_loader = (
            session.eval_loader(
                _eval_subset(a_set, n, cfg.seed),
                max(s.batch_size, 256),
                self.bundle.mean,
                self.bundle.std,
                env,
                cfg.runtime.workers,
            )
            for n in (s.eval_images, select_count(len(a_set), s.select_images))
        )
        self.w_stream, self.a_stream = BatchStream(self.w_loader), BatchStream(self.a_loader)
        self.steps_per_epoch = s.steps_per_epoch or len(self.w_loader)
        self.total_steps = self.steps_per_epoch * s.epochs

        seed_everything(cfg.seed)
        self.network = session.search_network(cfg, self.bundle).to(self.dev)
        self.cell, self.backbone = self.network.cell, self.network.backbone
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
        self.records: list[EdgeRecord] = []
        self.order = edge_order(len(self.cell.edges), cfg.seed, s.select_order)
        self.seconds = {"search": 0.0, "select": 0.0}

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return session.checkpoint_state(
            self.cfg,
            stage=self.stage,
            epoch=self.epoch,
            cell=self.cell.state_dict(),
            backbone=self.backbone.state_dict(),
            w_opt=self.w_opt.state_dict(),
            a_opt=self.a_opt.state_dict(),
            streams={"w": self.w_stream.state(), "a": self.a_stream.state()},
            log=self.log,
            records=[r.to_dict() for r in self.records],
            order=self.order,
            seconds=self.seconds,
        )

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        self.cell.load_state_dict(ckpt["cell"])
        self.backbone.load_state_dict(ckpt["backbone"])
        self.w_opt.load_state_dict(ckpt["w_opt"])
        self.a_opt.load_state_dict(ckpt["a_opt"])
        self.w_stream.load_state(ckpt["streams"]["w"])
        self.a_stream.load_state(ckpt["streams"]["a"])
        self.stage, self.epoch, self.log = ckpt["stage"], ckpt["epoch"], ckpt["log"]
        self.records = [EdgeRecord.from_dict(r) for r in ckpt["records"]]
        self.order, self.seconds = ckpt["order"], ckpt["seconds"]
        set_rng_state(ckpt["rng"])

    def save(self) -> None:
        session.save_checkpoint(self.state_dict(), self.cfg, self.env)

    # -- steps ------------------------------------------------------------------------
    def _loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with autocast(self.dev, self.amp):
            logits = self.backbone(self.cell(x))
        return F.cross_entropy(logits.float(), y), (logits.argmax(1) == y).sum()

    def _arch_grads_first_order(self, xv: Tensor, yv: Tensor) -> tuple[list[Tensor], float, int]:
        loss, correct = self._loss(xv, yv)
        grads = list(torch.autograd.grad(loss, self.a_params))
        return grads, float(loss.detach()), int(correct)

    def _arch_grads_unrolled(
        self, xt: Tensor, yt: Tensor, xv: Tensor, yv: Tensor
    ) -> tuple[list[Tensor], float, int]:
        """DARTS second order: grad_a L_val(w', a) - eta * (finite-difference Hessian term)."""
        eta = self.w_opt.param_groups[0]["lr"]
        momentum, wd = self.settings.w_momentum, self.settings.w_wd
        backup = [p.detach().clone() for p in self.w_params]
        buffers = [b.detach().clone() for b in self.backbone.buffers()]
        loss_t, _ = self._loss(xt, yt)
        gw = list(torch.autograd.grad(loss_t, self.w_params))
        all_reduce_(gw, self.env)
        with torch.no_grad():  # virtual step w' = w - eta * (momentum * buf + g + wd * w)
            for p, g in zip(self.w_params, gw):
                d = g + wd * p
                buf = self.w_opt.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    d = d + momentum * buf
                p.sub_(eta * d)
        loss_v, correct = self._loss(xv, yv)
        grads = torch.autograd.grad(loss_v, self.a_params + self.w_params)
        d_alpha, d_w = list(grads[: len(self.a_params)]), list(grads[len(self.a_params) :])
        all_reduce_(d_w, self.env)
        r = 0.01 / (torch.sqrt(sum((g.float() ** 2).sum() for g in d_w)) + 1e-12)

        def arch_grad_at(sign: float) -> list[Tensor]:
            with torch.no_grad():
                for p, p0, g in zip(self.w_params, backup, d_w):
                    p.copy_(p0 + sign * r * g)
            loss, _ = self._loss(xt, yt)
            return list(torch.autograd.grad(loss, self.a_params))

        g_plus, g_minus = arch_grad_at(1.0), arch_grad_at(-1.0)
        with torch.no_grad():
            for p, p0 in zip(self.w_params, backup):
                p.copy_(p0)
            for b, b0 in zip(self.backbone.buffers(), buffers):
                b.copy_(b0)
        out = [da - eta * (gp - gm) / (2 * r) for da, gp, gm in zip(d_alpha, g_plus, g_minus)]
        return out, float(loss_v.detach()), int(correct)

    def arch_step(self, xt: Tensor, yt: Tensor, xv: Tensor, yv: Tensor) -> tuple[float, int]:
        """Adam on the architecture from the arch batch (xv, yv) (order 2: and the weight
        batch (xt, yt) of the unrolled step); returns (arch loss, number correct)."""
        if self.settings.order == 2:
            grads, loss, correct = self._arch_grads_unrolled(xt, yt, xv, yv)
        else:
            grads, loss, correct = self._arch_grads_first_order(xv, yv)
        all_reduce_(grads, self.env)
        for p, g in zip(self.a_params, grads):
            p.grad = g.to(p.dtype)
        self.a_opt.step()
        self.a_opt.zero_grad(set_to_none=True)
        return loss, correct

    def step(self, step: int, arch: bool = True) -> StepStats:
        """Search step number `step` (from 0): the weight LR of the cosine schedule at
        `step`, the next weight and arch batches of the persistent streams, the arch step
        (when `arch`; off in warm-up epochs) and the weight step. The seconds exclude
        making the batches (CUDA is synchronised around each part)."""
        s = self.settings
        set_lr(self.w_opt, cosine_lr(step, self.total_steps, s.w_lr, s.w_lr_min))
        xt, yt = next(self.w_stream)
        xv, yv = next(self.a_stream)
        synchronize(self.dev)
        t0 = time.perf_counter()
        a_loss, a_correct, a_n = float("nan"), 0, 0
        if arch:
            a_loss, a_correct = self.arch_step(xt, yt, xv, yv)
            a_n = len(yv)
        synchronize(self.dev)
        t1 = time.perf_counter()
        w_loss, w_correct = weight_step(
            self.cell, self.ddp_backbone, self.w_opt, xt, yt, s.grad_clip, self.amp
        )
        synchronize(self.dev)
        t2 = time.perf_counter()
        return StepStats(a_loss, a_correct, a_n, w_loss, w_correct, len(yt), t1 - t0, t2 - t1)

    def train_epoch(self) -> dict[str, Any]:
        w_meter, a_meter = Meter(), Meter()
        arch_on = self.epoch >= self.settings.warmup_epochs
        t_arch = t_weight = 0.0
        bar = tqdm(
            range(self.steps_per_epoch),
            desc=f"search {self.epoch + 1}/{self.settings.epochs}",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        for i in bar:
            fault_point("step", self.epoch * self.steps_per_epoch + i)  # testing hook
            st = self.step(self.epoch * self.steps_per_epoch + i, arch=arch_on)
            if arch_on:
                a_meter.update(st.arch_loss, st.arch_correct, st.arch_n)
            w_meter.update(st.weight_loss, st.weight_correct, st.weight_n)
            t_arch, t_weight = t_arch + st.sec_arch, t_weight + st.sec_weight
            bar.set_postfix(
                loss=f"{w_meter.loss:.3f}",
                acc=f"{w_meter.acc:.3f}",
                arch_acc=f"{a_meter.acc:.3f}",
                s_step=f"{(t_arch + t_weight) / (i + 1):.3f}",
            )
        bar.close()
        fault_point("epoch", self.epoch + 1)
        n = self.steps_per_epoch
        totals = torch.tensor(
            [
                w_meter.loss_sum,
                w_meter.correct,
                w_meter.n,
                a_meter.loss_sum,
                a_meter.correct,
                a_meter.n,
            ],
            dtype=torch.float64,
        )
        all_reduce_([totals], self.env, average=False)
        return {
            "train_loss": totals[0].item() / max(totals[2].item(), 1),
            "train_acc": totals[1].item() / max(totals[2].item(), 1),
            "arch_loss": totals[3].item() / max(totals[5].item(), 1) if arch_on else float("nan"),
            "arch_acc": totals[4].item() / max(totals[5].item(), 1) if arch_on else float("nan"),
            "lr": self.w_opt.param_groups[0]["lr"],
            "sec_per_step": (t_arch + t_weight) / n,
            "sec_arch_step": t_arch / n,
            "sec_weight_step": t_weight / n,
        }

    def evaluate(self, images: str = "eval") -> dict[str, Any]:
        """The supernet on the ``--eval-images`` subset (``images="eval"``) or, with per-image
        correctness and losses, on the ``--select-images`` one (``"select"``)."""
        broadcast_buffers(self.backbone, self.env)
        select = images == "select"
        batches = (self.select_loader if select else self.eval_loader).epoch_batches(0)
        chunk = session.eval_chunk(self.cfg)
        return evaluate(self.network, batches, self.env, self.amp, chunk, per_image=select)

    def _tau_row(self) -> dict[str, Any]:
        with torch.no_grad():
            return {
                "tau": {
                    "ops": list(self.cell.ops),
                    "values": self.cell.tau.detach().cpu().tolist(),
                },
                "weights": {
                    "ops": list(self.cell.ops),
                    "values": self.cell.edge_weights().cpu().tolist(),
                },
                **(
                    {"magnitudes": self.cell.magnitudes.detach().cpu().tolist()}
                    if self.cell.learn_magnitudes
                    else {}
                ),
                **({"sigmas": self.cell.sigma().cpu().tolist()} if self.cell.gaussian else {}),
            }

    def _val_fields(self, ev: dict[str, Any]) -> dict[str, Any]:
        """What an evaluation adds to the epoch's log row."""
        return {"val_loss": ev["loss"], "val_acc": ev["acc"]}

    def write_report(self, result: dict[str, Any]) -> None:
        write_search_report(self, result)

    def write_log(self) -> None:
        if self.env.is_main:
            write_log(self.log, self.out / "search_log")

    # -- phases -----------------------------------------------------------------------
    def search(self) -> None:
        epochs = self.settings.epochs
        if not self.log:
            self.log.append({"epoch": 0, **self._tau_row()})
        while self.epoch < epochs:
            t0 = time.perf_counter()
            stats = self.train_epoch()
            self.epoch += 1
            last = self.epoch == epochs
            every = self.settings.eval_every
            ev = self.evaluate() if last or (every and self.epoch % every == 0) else None
            self.seconds["search"] += time.perf_counter() - t0
            row = {"epoch": self.epoch, **stats}
            if ev is not None:
                row.update(self._val_fields(ev))
            row.update(epoch_sec=time.perf_counter() - t0, **self._tau_row())
            self.log.append(row)
            if self.env.is_main:
                msg = (
                    f"epoch {self.epoch}/{epochs}: train loss {stats['train_loss']:.4f} "
                    f"acc {stats['train_acc']:.4f} | arch acc {stats['arch_acc']:.4f}"
                )
                if ev is not None:
                    msg += f" | val {self.score_name} {ev['acc']:.4f}"
                msg += f" | {stats['sec_per_step']:.3f} s/step, {row['epoch_sec']:.1f} s"
                print(msg, file=sys.stderr, flush=True)
            self.write_log()
            self.save()

    def _finetune(self, _: int) -> None:
        s = self.settings
        steps = int(round(s.finetune_epochs * self.steps_per_epoch))
        set_lr(self.w_opt, s.finetune_lr)
        for _ in range(steps):
            x, y = next(self.w_stream)
            weight_step(self.cell, self.ddp_backbone, self.w_opt, x, y, s.grad_clip, self.amp)

    def select(self) -> Genotype:
        self.stage = "select"
        t0 = time.perf_counter()
        if self.settings.select == "argmax":
            return self.cell.genotype()
        n_evals = len(self.cell.edges) * (len(self.cell.ops) + 1)
        bar = tqdm(
            total=n_evals,
            desc="select",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
            initial=len(self.records) * (len(self.cell.ops) + 1),
        )

        def acc() -> dict[str, Any]:
            fault_point("select")
            bar.update(1)
            return self.evaluate("select")

        def on_edge(records: list[EdgeRecord]) -> None:
            self.records = records
            self.seconds["select"] += time.perf_counter() - t0_edge[0]
            t0_edge[0] = time.perf_counter()
            self.save()

        def say(msg: str) -> None:
            if self.env.is_main:
                tqdm.write(msg, file=sys.stderr)

        t0_edge = [t0]
        genotype, self.records = select_ops(
            self.cell,
            acc,
            self.order,
            self.records,
            self._finetune if self.settings.finetune_epochs > 0 else None,
            on_edge,
            say,
        )
        bar.close()
        return genotype

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        if self.stage == "search":
            self.search()
        genotype = self.select()
        final = self.evaluate()
        self.stage = "done"
        self.save()
        result = {
            "genotype": genotype,
            "log": self.log,
            "records": [r.to_dict() for r in self.records],
            "final_val_acc": final["acc"],
            "seconds": {**self.seconds, "this_run": time.perf_counter() - t0},
        }
        if self.env.is_main:
            self.write_report(result)
            if self.settings.rf:
                from das.rf_report import write_search_fields

                write_search_fields(self, result)
        self.env.barrier()
        return result


# ----------------------------------------------------------------------------- entry points


def run_search(cfg: RunConfig, env: DistEnv | None = None) -> dict[str, Any]:
    """Run (or, with ``--resume``, continue) the search configured by `cfg`."""
    return session.run_job(cfg, env, lambda cfg, env, _: _searcher(cfg, env))


def _searcher(cfg: RunConfig, env: DistEnv) -> Any:
    if cfg.method == "dra":  # Differentiable RandAugment
        from das.dra_search import DRASearcher

        return DRASearcher(cfg, env)
    if cfg.segmentation:
        from das.segjobs import SegSearcher

        return SegSearcher(cfg, env)
    return Searcher(cfg, env)


def _main(cfg: RunConfig) -> int:
    if cfg.search is not None and cfg.search.seeds is not None:  # one search per seed
        from das.consensus import run_seeds

        result = run_seeds(cfg)
        if cli.is_main_process():
            print(f"consensus genotype: {list(result['genotype'].ops)}")
            print(f"wrote {cfg.out / 'consensus.json'} and {cfg.out / 'report.md'}")
        return 0
    result = run_search(cfg)
    if result.get("method") == "dra":  # (cfg is the command line's; --resume may be dra)
        from das.dra_search import print_result

        if cli.is_main_process():
            print_result(cfg, result)
        return 0
    if cli.is_main_process():
        print(f"genotype: {list(result['genotype'].ops)}")
        print(
            f"wrote {cfg.out / 'genotype.json'} and {cfg.out / 'report.md'} "
            f"(search {result['seconds']['search']:.1f} s, selection "
            f"{result['seconds']['select']:.1f} s)"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run_cli("search", argv, _main)


if __name__ == "__main__":
    raise SystemExit(main())
