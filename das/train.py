"""``python -m das.train``: train from scratch with a genotype, or run the paper's ablation.

``--variant`` picks the network (see :mod:`das.variants`): ``das`` (the genotype's video +
fusion), ``baseline`` (2D, T=1), ``augment`` (DAS transforms as 2D augmentation),
``replica`` (identity frames + fusion), ``shuffle`` (DAS frames shuffled). ``--ablation``
trains every variant (x every ``--fusions`` for the video variants, Table 6) and writes
``ablation.md`` / ``ablation.json`` (like Tables 5/10); ``--seeds 0,1,2`` repeats it per
seed (mean +- sd and DAS's paired differences) and ``--jobs N`` trains N runs at once in
separate processes (small runs sharing one GPU); see :mod:`das.ablation`. ``--epochs`` and
``--max-steps`` bound the budget. Each run writes ``train_log.{csv,json}``, ``curves.png``,
``result.json``, ``config.json`` and an atomic ``checkpoint.pt`` per epoch; ``--resume``
continues it, ``--eval-only`` evaluates it (also ``python -m das.evaluate``). Under
``torchrun`` the backbone is DDP (``--batch-size`` per process) and only rank 0 writes.
"""

from __future__ import annotations

import functools
import json
import shlex
import sys
import time
from typing import Any

import torch
from tqdm import tqdm

from das import cli, session
from das.cell import Genotype
from das.config import ConfigError, RunConfig
from das.data import DataBundle, DataError
from das.engine import Meter, cosine_lr, evaluate, make_sgd, set_lr, weight_step
from das.report import plot_curves, write_log
from das.runtime import (
    DistEnv,
    all_reduce_,
    atomic_write_text,
    broadcast_buffers,
    fault_point,
    seed_everything,
    set_rng_state,
    synchronize,
)
from das.variants import VIDEO_VARIANTS

__all__ = ["Trainer", "main", "run_train"]


class Trainer:
    """One training run of one variant/fusion; ``run()`` trains, evaluates and writes."""

    def __init__(
        self,
        cfg: RunConfig,
        env: DistEnv,
        bundle: DataBundle | None = None,
        genotype: Genotype | None = None,
    ) -> None:
        assert cfg.train is not None
        self.cfg, self.env, self.genotype = cfg, env, genotype
        self.settings = t = cfg.train
        self.bundle = bundle = bundle or session.load_bundle(cfg.data)
        self.out = cfg.out
        self.dev = env.device
        self.progress = env.is_main and not cfg.runtime.no_progress
        self.amp = cfg.runtime.amp
        self.meta = session.DataMeta.of(bundle)
        self.train_loader = session.train_loader(cfg, bundle, bundle.train, 2, env)
        self.val_loader = session.eval_loader(
            bundle.val, max(t.batch_size, 128), bundle.mean, bundle.std, env, cfg.runtime.workers
        )
        self.steps_per_epoch = len(self.train_loader)
        total = self.steps_per_epoch * t.epochs
        self.total_steps = min(total, t.max_steps) if t.max_steps else total

        seed_everything(cfg.seed)
        aspect = bundle.train.x.shape[-1] / bundle.train.x.shape[-2]
        self.network = session.variant_network(cfg, genotype, self.meta, aspect).to(self.dev)
        seed_everything(cfg.seed * 1000 + 1 + env.rank)  # per-rank randomness of the cells
        self.backbone = self.network.backbone
        self.ddp_backbone = session.distribute(self.backbone, env)
        self.opt = make_sgd(
            self.backbone.parameters(), t.lr, t.momentum, t.wd, nesterov=t.momentum > 0
        )
        self.epoch = self.step = 0
        self.log: list[dict[str, Any]] = []
        self.seconds = 0.0

    @functools.cached_property
    def name(self) -> str:
        """The variant, or with ``--policy`` the policy's name (``randaugment-2-9``)."""
        t = self.settings
        if t.policy is None:
            return t.variant
        from das.policy import parse_policy

        return parse_policy(t.policy).name

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.backbone.parameters())

    def state_dict(self) -> dict[str, Any]:
        return session.checkpoint_state(
            self.cfg,
            genotype=self.genotype.to_dict() if self.genotype else None,
            data=self.meta.to_dict(),
            epoch=self.epoch,
            step=self.step,
            network=self.network.state_dict(),
            opt=self.opt.state_dict(),
            log=self.log,
            seconds=self.seconds,
        )

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        self.network.load_state_dict(ckpt["network"])
        self.opt.load_state_dict(ckpt["opt"])
        self.epoch, self.step, self.log = ckpt["epoch"], ckpt["step"], ckpt["log"]
        self.seconds = ckpt["seconds"]
        set_rng_state(ckpt["rng"])

    def save(self) -> None:
        session.save_checkpoint(self.state_dict(), self.cfg, self.env)

    def evaluate(self) -> dict[str, float]:
        broadcast_buffers(self.network, self.env)
        batches = self.val_loader.epoch_batches(0)
        return evaluate(self.network, batches, self.env, self.amp, session.eval_chunk(self.cfg))

    def _done(self) -> bool:
        return self.epoch >= self.settings.epochs or self.step >= self.total_steps

    def train_epoch(self) -> dict[str, Any]:
        t = self.settings
        meter = Meter()
        n_steps = min(self.steps_per_epoch, self.total_steps - self.step)
        t_steps = 0.0
        label = self.name + (f"/{self.cfg.model.fusion}" if t.variant in VIDEO_VARIANTS else "")
        bar = tqdm(
            range(n_steps),
            desc=f"{label} {self.epoch + 1}/{t.epochs}",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        self.network.train()
        for i, (x, y) in zip(bar, self.train_loader.epoch_batches(self.epoch)):
            fault_point("step", self.step)  # testing hook (DAS_FAULT_AT)
            set_lr(self.opt, cosine_lr(self.step, self.total_steps, t.lr, t.lr_min))
            t0 = time.perf_counter()
            loss, correct = weight_step(
                self.network.video, self.ddp_backbone, self.opt, x, y, t.grad_clip, self.amp
            )
            synchronize(self.dev)
            t_steps += time.perf_counter() - t0
            self.step += 1
            meter.update(loss, correct, len(y))
            bar.set_postfix(
                loss=f"{meter.loss:.3f}", acc=f"{meter.acc:.3f}", s_step=f"{t_steps / (i + 1):.3f}"
            )
        bar.close()
        fault_point("epoch", self.epoch + 1)
        totals = torch.tensor([meter.loss_sum, meter.correct, meter.n], dtype=torch.float64)
        all_reduce_([totals], self.env, average=False)
        return {
            "step": self.step,
            "lr": self.opt.param_groups[0]["lr"],
            "train_loss": totals[0].item() / max(totals[2].item(), 1),
            "train_acc": totals[1].item() / max(totals[2].item(), 1),
            "sec_per_step": t_steps / max(n_steps, 1),
        }

    def run(self) -> dict[str, Any]:
        t = self.settings
        while not self._done():
            t0 = time.perf_counter()
            stats = self.train_epoch()
            self.epoch += 1
            every = t.eval_every
            ev = self.evaluate() if self._done() or (every and self.epoch % every == 0) else None
            self.seconds += time.perf_counter() - t0
            row = {"epoch": self.epoch, **stats, "epoch_sec": time.perf_counter() - t0}
            if ev is not None:
                row.update(val_loss=ev["loss"], **self.val_fields(ev))
            self.log.append(row)
            if self.env.is_main:
                name, key = self.METRIC
                msg = (
                    f"[{self.name}] epoch {self.epoch}: train loss {stats['train_loss']:.4f} "
                    f"{name} {stats['train_' + key]:.4f}"
                )
                if ev is not None:
                    msg += f" | val {name} {ev[key]:.4f}"
                print(msg + f" | {stats['sec_per_step']:.3f} s/step", file=sys.stderr, flush=True)
                write_log(self.log, self.out / "train_log")
            self.save()
        final = self.evaluate()
        result = self.result(final)
        if self.env.is_main:
            write_log(self.log, self.out / "train_log")
            if self.log:
                plot_curves(self.log, self.out / "curves.png", ("train", "val"), self.METRIC[1])
            self.write_extras()
            atomic_write_text(json.dumps(result, indent=1) + "\n", self.out / "result.json")
        self.env.barrier()
        return result

    METRIC = ("acc", "acc")  # (name in messages, key of the evaluation and log)

    def val_fields(self, ev: dict[str, Any]) -> dict[str, Any]:
        """What an evaluation adds to an epoch's log row besides its loss."""
        return {"val_acc": ev["acc"]}

    def write_extras(self) -> None:
        """Pictures a task adds to a finished run's outputs (rank 0)."""

    def result(self, final: dict[str, float]) -> dict[str, Any]:
        t = self.settings
        video = t.variant in VIDEO_VARIANTS
        accs = [r["val_acc"] for r in self.log if "val_acc" in r]
        steps = [r["sec_per_step"] for r in self.log]
        return {
            "variant": self.name,
            "policy": t.policy,
            "seed": self.cfg.seed,
            "fusion": self.cfg.model.fusion if video else "none",
            "frames": self.network.backbone.frames if video else 1,
            "genotype": list(self.genotype.ops) if self.genotype else None,
            "params": self.params,
            "epochs": self.epoch,
            "steps": self.step,
            "val_acc": final["acc"],
            "val_loss": final["loss"],
            "best_val_acc": max(accs + [final["acc"]]),
            "train_acc": self.log[-1]["train_acc"] if self.log else None,
            "train_seconds": self.seconds,
            "sec_per_step": sum(steps) / max(len(steps), 1),
            "data": self.bundle.describe(),
        }


def run_train(
    cfg: RunConfig, env: DistEnv | None = None, bundle: DataBundle | None = None
) -> dict[str, Any]:
    """Train (or, with ``--resume``, continue; with ``--eval-only``, evaluate) one run."""
    assert cfg.train is not None
    if cfg.train.eval_only:
        from das.evaluate import evaluate_checkpoint

        path = cfg.train.checkpoint or str(cfg.out / "checkpoint.pt")
        with session.process(cfg.runtime.device, cfg.runtime.threads, env) as env:
            try:
                return evaluate_checkpoint(path, cfg.runtime.device, env=env)
            except ValueError as exc:  # unreadable, not a train checkpoint, bad config
                if isinstance(exc, (ConfigError, DataError)):
                    raise
                raise ConfigError(f"--eval-only: {exc}") from None

    def make(cfg: RunConfig, env: DistEnv, ckpt: dict[str, Any] | None) -> Trainer:
        saved = ckpt["genotype"] if ckpt else None
        genotype = Genotype.from_dict(saved) if saved else session.train_genotype(cfg)
        if cfg.segmentation:
            from das.segjobs import SegTrainer

            return SegTrainer(cfg, env, bundle, genotype)  # type: ignore[arg-type]
        return Trainer(cfg, env, bundle, genotype)

    return session.run_job(cfg, env, make)


def _main(cfg: RunConfig, argv: list[str] | None = None) -> int:
    assert cfg.train is not None
    if cfg.train.ablation:
        from das.ablation import run_ablation

        args = sys.argv[1:] if argv is None else argv
        run_ablation(cfg, command=f"python -m das.train {shlex.join(args)}")
        if cli.is_main_process():
            print((cfg.out / "ablation.md").read_text())
    else:
        result = run_train(cfg)
        if cli.is_main_process():
            if cfg.train.rf and not cfg.train.eval_only:
                from das.rf_report import write_train_fields

                write_train_fields([cfg.out / "checkpoint.pt"], cfg.out / "rf", None)
            print(json.dumps(result, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run_cli("train", argv, lambda cfg: _main(cfg, argv))


if __name__ == "__main__":
    raise SystemExit(main())
