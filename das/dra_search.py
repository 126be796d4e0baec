"""``python -m das.search --method dra``: search a Differentiable RandAugment policy
(:class:`das.dra.DRAPolicy`, Xiao et al., IEEE TIP 2023) on a plain 2D network.

The proxy is a seeded subset of ``--proxy-images`` training images, split in half: the
network's weights train on one half, the policy on the other. Per step, FIRST the policy
step on a policy-half batch: ``loss = CE(net(aug(x)), y) + lambda * KL(p(x) || p(aug(x)))``
(``lambda`` = ``--dra-kl-weight``; ``p`` the network's softmax; ``p(x)`` of the original
batch is the detached target, so the gradient reaches the policy through ``p(aug(x))``
only), first order, AdamW (``--dra-lr``, betas ``--a-beta1/--a-beta2``, weight decay
``--a-wd``) on the policy's parameters only (then mu projected into [0, 1], sigma onto
>= 0); THEN the weight step: SGD (cosine ``--w-lr``) on an augmented weight-half batch
(the policy sampled, no gradient to it).
The policy acts in [0, 1] pixel space: batches are un-normalised with the data mean/std
before it and normalised after.

Outputs in ``--out``: ``policy.json``, ``search_log.{csv,json}`` (per epoch: losses,
accuracies, per-layer weights, mu and sigma), ``report.md`` with ``weights.png`` and
``magnitudes.png``, ``config.json`` and ``checkpoint.pt`` (every epoch; ``--resume`` repeats
an uninterrupted run). Under ``torchrun`` only rank 0 writes; the policy's gradients are
averaged over the ranks.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from das import session
from das.config import RunConfig
from das.data import BatchStream, DataBundle, ImageSet
from das.dra import DRAPolicy
from das.dra_ops import op_table, resolve_dra_ops
from das.engine import Meter, autocast, cosine_lr, evaluate, make_sgd, set_lr, weight_step
from das.models import build_backbone
from das.report import markdown_table, plt_module, write_log
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
from das.search import _eval_subset, _halves

__all__ = ["DRASearcher", "plot_magnitudes", "plot_weights", "write_dra_report"]


def _proxy(train: ImageSet, n: int, seed: int) -> ImageSet:
    """A seeded subset of `n` training images (all of them when there are fewer)."""
    if n >= len(train):
        return train
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 104729))
    return train.subset(perm[:n].sort().values)


class DRASearcher:
    """State and steps of one DRA search; ``run()`` searches and writes the outputs."""

    score_name = "acc"

    def __init__(self, cfg: RunConfig, env: DistEnv, bundle: DataBundle | None = None) -> None:
        assert cfg.search is not None and cfg.dra is not None
        self.cfg, self.env = cfg, env
        self.settings = s = cfg.search
        self.dra = r = cfg.dra
        self.out, self.dev = cfg.out, env.device
        self.progress = env.is_main and not cfg.runtime.no_progress
        self.amp = cfg.runtime.amp
        self.bundle = b = bundle or session.load_bundle(cfg.data)
        proxy = replace(b, train=_proxy(b.train, r.proxy_images, cfg.seed))
        self.proxy_size = len(proxy.train)
        w_set, p_set = _halves(proxy, cfg.seed)
        self.w_loader = session.train_loader(cfg, b, w_set, 0, env)
        self.p_loader = session.train_loader(cfg, b, p_set, 1, env)
        self.eval_loader = session.eval_loader(
            _eval_subset(b.val, s.eval_images, cfg.seed),
            max(s.batch_size, 256),
            b.mean,
            b.std,
            env,
            cfg.runtime.workers,
        )
        self.w_stream, self.p_stream = BatchStream(self.w_loader), BatchStream(self.p_loader)
        self.steps_per_epoch = s.steps_per_epoch or len(self.w_loader)
        self.total_steps = self.steps_per_epoch * s.epochs

        seed_everything(cfg.seed)
        m = cfg.model
        self.network = build_backbone(
            m.arch,
            b.num_classes,
            b.in_channels,
            frames=1,
            fusion="none",
            image_size=b.image_size,
            width_mult=m.width_mult,
        ).to(self.dev)
        self.ddp_network = session.distribute(self.network, env)
        self.policy = DRAPolicy(
            resolve_dra_ops(r.dra_ops), r.dra_space, r.dra_layers, r.dra_temperature
        )
        self.policy.to(self.dev)
        self.p_params = list(self.policy.parameters())
        self.w_opt = make_sgd(self.network.parameters(), s.w_lr, s.w_momentum, s.w_wd)
        self.p_opt = torch.optim.AdamW(
            self.p_params, lr=r.dra_lr, betas=(s.a_beta1, s.a_beta2), weight_decay=s.a_wd
        )
        # the policy's draws (ops, magnitudes, signs, cutout squares), one stream per rank
        self.generator = torch.Generator().manual_seed(cfg.seed * 1000 + 17 + env.rank)
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(b.mean, device=self.dev).view(shape)
        self.std = torch.tensor(b.std, device=self.dev).view(shape)
        self.epoch = 0
        self.stage = "search"
        self.log: list[dict[str, Any]] = []
        self.seconds = {"search": 0.0}

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return session.checkpoint_state(
            self.cfg,
            stage=self.stage,
            epoch=self.epoch,
            network=self.network.state_dict(),
            policy=self.policy.state_dict(),
            w_opt=self.w_opt.state_dict(),
            p_opt=self.p_opt.state_dict(),
            streams={"w": self.w_stream.state(), "p": self.p_stream.state()},
            generator=self.generator.get_state(),
            log=self.log,
            seconds=self.seconds,
        )

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        self.network.load_state_dict(ckpt["network"])
        self.policy.load_state_dict(ckpt["policy"])
        self.w_opt.load_state_dict(ckpt["w_opt"])
        self.p_opt.load_state_dict(ckpt["p_opt"])
        self.w_stream.load_state(ckpt["streams"]["w"])
        self.p_stream.load_state(ckpt["streams"]["p"])
        self.generator.set_state(ckpt["generator"])
        self.stage, self.epoch, self.log = ckpt["stage"], ckpt["epoch"], ckpt["log"]
        self.seconds = ckpt["seconds"]
        set_rng_state(ckpt["rng"])

    def save(self) -> None:
        session.save_checkpoint(self.state_dict(), self.cfg, self.env)

    # -- steps ------------------------------------------------------------------------
    def augmented(self, x: Tensor, grad: bool = False) -> Tensor:
        """Normalised batch `x` ``(B, C, H, W)`` through the policy in pixel space, normalised
        again (with gradients to the policy when `grad`)."""
        pixels = (x * self.std + self.mean).clamp(0, 1)
        with torch.set_grad_enabled(grad):
            aug = self.policy(pixels, generator=self.generator)
        return (aug - self.mean) / self.std

    def policy_step(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """AdamW on the policy from the policy-half batch (x, y): CE on the augmented batch
        + lambda * KL(p(x) || p(aug(x))), p(x) detached. Returns the loss parts and the
        number correct on the augmented batch."""
        with torch.no_grad(), autocast(self.dev, self.amp):
            target = F.softmax(self.network(x).float(), dim=1)
        aug = self.augmented(x, grad=True)  # the policy in float32, outside autocast
        with autocast(self.dev, self.amp):
            logits = self.network(aug).float()
        ce = F.cross_entropy(logits, y)
        kl = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")
        loss = ce + self.dra.dra_kl_weight * kl
        grads = list(torch.autograd.grad(loss, self.p_params, allow_unused=True))
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.p_params, grads)]
        all_reduce_(grads, self.env)
        for p, g in zip(self.p_params, grads):
            p.grad = g
        self.p_opt.step()
        self.p_opt.zero_grad(set_to_none=True)
        self.policy.project_()
        correct = int((logits.argmax(1) == y).sum())
        parts = {"loss": float(loss.detach()), "ce": float(ce.detach()), "kl": float(kl.detach())}
        return {**parts, "correct": correct}

    def step(self, step: int) -> dict[str, float]:
        """Search step `step` (from 0): the cosine weight LR, the policy step on the next
        policy-half batch, then the weight step on the next (augmented) weight-half batch."""
        s = self.settings
        set_lr(self.w_opt, cosine_lr(step, self.total_steps, s.w_lr, s.w_lr_min))
        xw, yw = next(self.w_stream)
        xp, yp = next(self.p_stream)
        synchronize(self.dev)
        t0 = time.perf_counter()
        pol = self.policy_step(xp, yp)
        w_loss, w_correct = weight_step(
            self.augmented, self.ddp_network, self.w_opt, xw, yw, s.grad_clip, self.amp
        )
        synchronize(self.dev)
        return {
            **{f"p_{k}": v for k, v in pol.items()},
            "p_n": len(yp),
            "w_loss": w_loss,
            "w_correct": w_correct,
            "w_n": len(yw),
            "sec": time.perf_counter() - t0,
        }

    def train_epoch(self) -> dict[str, Any]:
        sums = torch.zeros(8, dtype=torch.float64)  # w loss, correct, n; p loss, ce, kl, corr, n
        seconds, w_meter = 0.0, Meter()
        bar = tqdm(
            range(self.steps_per_epoch),
            desc=f"dra {self.epoch + 1}/{self.settings.epochs}",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        for i in bar:
            fault_point("step", self.epoch * self.steps_per_epoch + i)  # testing hook
            st = self.step(self.epoch * self.steps_per_epoch + i)
            n_w, n_p = st["w_n"], st["p_n"]
            sums += torch.tensor(
                [
                    st["w_loss"] * n_w,
                    st["w_correct"],
                    n_w,
                    st["p_loss"] * n_p,
                    st["p_ce"] * n_p,
                    st["p_kl"] * n_p,
                    st["p_correct"],
                    n_p,
                ],
                dtype=torch.float64,
            )
            seconds += st["sec"]
            w_meter.update(st["w_loss"], int(st["w_correct"]), n_w)
            bar.set_postfix(loss=f"{w_meter.loss:.3f}", acc=f"{w_meter.acc:.3f}")
        bar.close()
        fault_point("epoch", self.epoch + 1)
        all_reduce_([sums], self.env, average=False)
        t = sums.tolist()
        nw, npol = max(t[2], 1.0), max(t[7], 1.0)
        return {
            "train_loss": t[0] / nw,
            "train_acc": t[1] / nw,
            "policy_loss": t[3] / npol,
            "policy_ce": t[4] / npol,
            "policy_kl": t[5] / npol,
            "policy_acc": t[6] / npol,
            "lr": self.w_opt.param_groups[0]["lr"],
            "sec_per_step": seconds / self.steps_per_epoch,
        }

    def evaluate(self) -> dict[str, float]:
        """The network (no augmentation) on a fixed subset of the validation split."""
        broadcast_buffers(self.network, self.env)
        batches = self.eval_loader.epoch_batches(0)
        return evaluate(self.network, batches, self.env, self.amp)

    def _policy_row(self) -> dict[str, Any]:
        rows = self.policy.layer_rows()
        ops = list(self.policy.ops)
        return {k: {"ops": ops, "values": [r[k] for r in rows]} for k in ("weights", "mu", "sigma")}

    def search(self) -> None:
        epochs = self.settings.epochs
        if not self.log:
            self.log.append({"epoch": 0, **self._policy_row()})
        while self.epoch < epochs:
            t0 = time.perf_counter()
            stats = self.train_epoch()
            self.epoch += 1
            every = self.settings.eval_every
            last = self.epoch == epochs
            ev = self.evaluate() if last or (every and self.epoch % every == 0) else None
            self.seconds["search"] += time.perf_counter() - t0
            row: dict[str, Any] = {"epoch": self.epoch, **stats}
            if ev is not None:
                row.update(val_loss=ev["loss"], val_acc=ev["acc"])
            row.update(epoch_sec=time.perf_counter() - t0, **self._policy_row())
            self.log.append(row)
            if self.env.is_main:
                top = "; ".join(
                    f"L{d + 1} {ops[0][0]} {ops[0][1]:.3f}"
                    for d, ops in enumerate(self.policy.top_ops(1))
                )
                msg = (
                    f"dra epoch {self.epoch}/{epochs}: train loss {stats['train_loss']:.4f} "
                    f"acc {stats['train_acc']:.4f} | policy loss {stats['policy_loss']:.4f} "
                    f"(kl {stats['policy_kl']:.4f})"
                )
                if ev is not None:
                    msg += f" | val acc {ev['acc']:.4f}"
                msg += (
                    f" | top {top} | {stats['sec_per_step']:.3f} s/step, {row['epoch_sec']:.1f} s"
                )
                print(msg, file=sys.stderr, flush=True)
                write_log(self.log, self.out / "search_log", ("weights", "mu", "sigma"), "l")
            self.save()

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        if self.stage == "search":
            self.search()
        self.stage = "done"
        self.save()
        last = next((r for r in reversed(self.log) if "val_acc" in r), {})
        result = {
            "method": "dra",
            "policy": self.policy.to_dict(),
            "top_ops": self.policy.top_ops(3),
            "log": self.log,
            "final_val_acc": last.get("val_acc", float("nan")),
            "seconds": {**self.seconds, "this_run": time.perf_counter() - t0},
        }
        if self.env.is_main:
            self.policy.save(self.out / "policy.json")
            write_dra_report(self, result)
        self.env.barrier()
        return result


# ----------------------------------------------------------------------------- report


def plot_weights(log: list[dict[str, Any]], path: Path) -> None:
    """Per layer: the selecting weight of every op over the epochs."""
    _plot_layers(log, path, "weights", "selecting weight softmax(w)")


def plot_magnitudes(log: list[dict[str, Any]], path: Path) -> None:
    """Per layer: mu +- sigma of every op over the epochs."""
    _plot_layers(log, path, "mu", "magnitude mu +- sigma (normalised)")


def _plot_layers(log: list[dict[str, Any]], path: Path, key: str, ylabel: str) -> None:
    plt = plt_module()
    rows = [r for r in log if key in r]
    ops = rows[0][key]["ops"]
    layers = len(rows[0][key]["values"])
    epochs = [r["epoch"] for r in rows]
    cmap = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, layers, figsize=(5.5 * layers + 2, 4), squeeze=False)
    for d, ax in enumerate(axes[0]):
        for i, op in enumerate(ops):
            y = torch.tensor([r[key]["values"][d][i] for r in rows])
            style = ("-", "--")[i // 8]  # tab20: close colours told apart by the line style
            ax.plot(epochs, y, color=cmap(i % 20), ls=style, label=op, lw=1.3)
            if key == "mu":
                s = torch.tensor([r["sigma"]["values"][d][i] for r in rows]).abs()
                ax.fill_between(epochs, y - s, y + s, color=cmap(i % 20), alpha=0.12)
        ax.set_title(f"layer {d + 1}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_dra_report(searcher: DRASearcher, result: dict[str, Any]) -> None:
    """``report.md`` with the final policy per layer, the per-epoch table and the two plots."""
    out, cfg, policy = searcher.out, searcher.cfg, searcher.policy
    assert cfg.dra is not None
    log = result["log"]
    plot_weights(log, out / "weights.png")
    plot_magnitudes(log, out / "magnitudes.png")
    specs = op_table(cfg.dra.dra_space)
    lines = [
        "# Differentiable RandAugment search",
        "",
        f"Data `{cfg.data.data}`, arch `{cfg.model.arch}`, {cfg.dra.dra_layers} layers x "
        f"{len(policy.ops)} ops (`{cfg.dra.dra_space}` ranges), proxy {searcher.proxy_size} "
        f"training images (half weights, half policy), {cfg.search.epochs} epochs x "
        f"{searcher.steps_per_epoch} steps, batch {cfg.search.batch_size}; search "
        f"{result['seconds']['search']:.1f} s; final val acc (no augmentation) "
        f"{result['final_val_acc']:.4f}.",
        "",
        "Policy: `policy.json` (`DRAPolicy.load(path).augment(x01, generator)`).",
        "",
    ]
    rows_by_layer = policy.layer_rows()
    for d, row in enumerate(rows_by_layer):
        order = sorted(range(len(policy.ops)), key=lambda i: -row["weights"][i])
        table = []
        for i in order:
            spec = specs[policy.ops[i]]
            mu = min(max(row["mu"][i], 0.0), 1.0)
            value = spec.low + mu * (spec.high - spec.low)
            shown = "-" if spec.unit == "-" else f"{'+-' if spec.symmetric else ''}{value:.3g}"
            table.append(
                [spec.name, row["weights"][i], row["mu"][i], row["sigma"][i], shown, spec.unit]
            )
        lines += [
            f"## Layer {d + 1}",
            "",
            markdown_table(["op", "weight", "mu", "sigma", "parameter at mu", "unit"], table),
            "",
        ]
    keys = ["epoch", "train_loss", "train_acc", "policy_loss", "policy_kl", "policy_acc"]
    keys += ["val_acc", "sec_per_step"]
    table = [[r.get(k, "") for k in keys] for r in log if r["epoch"] > 0]
    lines += [
        "## Epochs",
        "",
        markdown_table(keys, table),
        "",
        "![selecting weights](weights.png)",
        "",
        "![magnitudes](magnitudes.png)",
        "",
    ]
    atomic_write_text("\n".join(lines), out / "report.md")


def print_result(cfg: RunConfig, result: dict[str, Any]) -> None:
    """What ``python -m das.search --method dra`` prints at the end (stdout)."""
    for d, ops in enumerate(result["top_ops"]):
        shown = ", ".join(f"{op} {w:.3f} (mu {mu:.2f}, sigma {s:.2f})" for op, w, mu, s in ops)
        print(f"layer {d + 1}: {shown}")
    print(
        f"wrote {cfg.out / 'policy.json'} and {cfg.out / 'report.md'} "
        f"(search {result['seconds']['search']:.1f} s)"
    )
