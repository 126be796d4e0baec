"""``python -m das.train``: train from scratch with a genotype, or run the paper's ablation.

``--variant`` picks the network (see :mod:`das.variants`): ``das`` (the genotype's video +
fusion), ``baseline`` (2D, T=1), ``augment`` (DAS transforms as 2D augmentation),
``replica`` (identity frames + fusion), ``shuffle`` (DAS frames shuffled). ``--ablation``
trains every variant (x every ``--fusions`` for the video variants, Table 6) and writes
``ablation.md`` / ``ablation.json`` (like Tables 5/10); ``--seeds 0,1,2`` repeats it per
seed (mean +- sd and DAS's paired differences) and ``--jobs N`` trains N runs at once in
separate processes (small runs sharing one GPU). ``--epochs`` and ``--max-steps`` bound the
budget. Each run writes ``train_log.{csv,json}``, ``curves.png``, ``result.json``
and an atomic ``checkpoint.pt`` per epoch; ``--resume`` continues it, ``--eval-only``
evaluates it (also ``python -m das.evaluate``). Under ``torchrun`` the backbone is DDP
(``--batch-size`` per process) and only rank 0 writes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from das import cli
from das.cell import Genotype, random_genotype
from das.data import BatchLoader, DataBundle, DataError, load_data
from das.engine import Meter, cosine_lr, evaluate, make_sgd, set_lr, weight_step
from das.report import markdown_table, plot_curves, write_log
from das.runtime import (
    DistEnv,
    all_reduce_,
    atomic_save,
    atomic_write_text,
    broadcast_buffers,
    deterministic,
    get_rng_state,
    init_distributed,
    load_checkpoint,
    ops_backend,
    seed_everything,
    set_rng_state,
    shutdown_distributed,
)
from das.variants import NEEDS_GENOTYPE, VARIANTS, VIDEO_VARIANTS, build_network

__all__ = ["Trainer", "build_parser", "main", "run_ablation", "run_train"]

RUNTIME_KEYS = (*cli.RUNTIME_KEYS, "eval_only")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m das.train",
        description="Train a network from scratch with a DAS genotype (or an ablation variant); "
        "--ablation trains all variants and writes a comparison table.",
        formatter_class=cli.HelpFormatter,
    )
    cli.add_data_args(p)
    cli.add_model_args(p)
    p.set_defaults(frames=None)
    for action in p._actions:
        if action.dest == "frames":
            action.help = "T for the replica variant (default: the genotype's T, else 4)"
    g = p.add_argument_group("variant")
    g.add_argument(
        "--genotype",
        default=None,
        help="genotype.json from das.search, or 'random' (a seeded random genotype); "
        "needed by the das, augment and shuffle variants",
    )
    g.add_argument("--variant", choices=VARIANTS, default="das", help="what to train")
    g.add_argument(
        "--ablation",
        action="store_true",
        help="train every variant of --variants and write ablation.md/json",
    )
    g.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma list of variants for --ablation"
    )
    g.add_argument(
        "--fusions",
        default=None,
        help="comma list of fusions for the video variants in --ablation (default: --fusion)",
    )
    p.add_argument(
        "--seeds",
        default=None,
        help="comma list of seeds for --ablation: every variant is trained once per seed "
        "(into OUT/<variant>/seed<S>) and the table gives mean +- sd and DAS's paired "
        "differences (default: --seed alone, into OUT/<variant>)",
    )
    p.add_argument(
        "--jobs",
        type=cli.positive_int,
        default=1,
        help="--ablation runs trained at once, each in its own process (e.g. several small "
        "runs sharing one GPU; CPU threads are split between them unless --threads is given)",
    )
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=cli.positive_int, default=15, help="training epochs")
    g.add_argument(
        "--max-steps",
        type=cli.positive_int,
        default=None,
        help="stop after this many optimiser steps (budget; the cosine schedule "
        "spans min(epochs x steps/epoch, max-steps))",
    )
    g.add_argument("--batch-size", type=cli.positive_int, default=64, help="batch size per process")
    g.add_argument("--lr", type=cli.positive_float, default=0.05, help="SGD learning rate (cosine)")
    g.add_argument("--lr-min", type=cli.nonneg_float, default=0.0, help="final learning rate")
    g.add_argument("--momentum", type=cli.nonneg_float, default=0.9, help="SGD (Nesterov) momentum")
    g.add_argument("--wd", type=cli.nonneg_float, default=5e-4, help="weight decay")
    g.add_argument(
        "--grad-clip", type=cli.nonneg_float, default=5.0, help="grad-norm clip (0 = off)"
    )
    g.add_argument(
        "--eval-every",
        type=cli.nonneg_int,
        default=1,
        help="evaluate on the val split every N epochs (0 = only at the end)",
    )
    cli.add_runtime_args(p, "runs/train")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt (per variant with --ablation)",
    )
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="only evaluate a trained checkpoint (--checkpoint, default OUT/checkpoint.pt)",
    )
    p.add_argument("--checkpoint", default=None, help="checkpoint for --eval-only")
    return p


def _genotype(spec: str | None, cfg: dict[str, Any]) -> Genotype | None:
    if spec is None:
        return None
    if spec == "random":
        return random_genotype("affine5", 4, cfg.get("frames") or 4, cfg["seed"], cfg["step_mode"])
    return Genotype.load(spec)


class Trainer:
    """One training run of one variant/fusion; ``run()`` trains, evaluates and writes."""

    def __init__(
        self, cfg: dict[str, Any], env: DistEnv, bundle: DataBundle, genotype: Genotype | None
    ) -> None:
        self.cfg, self.env, self.bundle, self.genotype = cfg, env, bundle, genotype
        self.out = Path(cfg["out"])
        self.dev = env.device
        self.progress = env.is_main and not cfg["no_progress"]
        b = bundle
        size = b.image_size
        pad = size // 8 if cfg["crop_pad"] is None else cfg["crop_pad"]
        flip = b.flip if cfg["flip"] == "auto" else cfg["flip"] == "on"
        common = dict(mean=b.mean, std=b.std, rank=env.rank, world=env.world, device=self.dev)
        self.train_loader = BatchLoader(
            b.train,
            min(cfg["batch_size"], len(b.train)),
            train=True,
            seed=cfg["seed"],
            stream=2,
            pad=pad,
            flip=flip,
            cutout=cfg["cutout"],
            drop_last=True,
            **common,
        )
        self.val_loader = BatchLoader(b.val, max(cfg["batch_size"], 128), train=False, **common)
        self.steps_per_epoch = len(self.train_loader)
        total = self.steps_per_epoch * cfg["epochs"]
        self.total_steps = min(total, cfg["max_steps"]) if cfg["max_steps"] else total

        seed_everything(cfg["seed"])
        frames = cfg["frames"] or (genotype.frames if genotype else 4)
        self.network = build_network(
            cfg["variant"],
            genotype,
            frames,
            cfg["fusion"],
            b.num_classes,
            b.in_channels,
            size,
            cfg["arch"],
            cfg["gsf_ratio"],
            cfg["width_mult"],
            aspect=b.train.x.shape[-1] / b.train.x.shape[-2],
            pixel_stats=(b.mean, b.std),
        ).to(self.dev)
        seed_everything(cfg["seed"] * 1000 + 1 + env.rank)  # per-rank randomness of the cells
        self.backbone = self.network.backbone
        self.ddp_backbone: nn.Module = self.backbone
        if env.distributed:
            ids = [self.dev.index] if self.dev.type == "cuda" else None
            self.ddp_backbone = nn.parallel.DistributedDataParallel(self.backbone, device_ids=ids)
        self.opt = make_sgd(
            self.backbone.parameters(),
            cfg["lr"],
            cfg["momentum"],
            cfg["wd"],
            nesterov=cfg["momentum"] > 0,
        )
        self.epoch = self.step = 0
        self.log: list[dict[str, Any]] = []
        self.seconds = 0.0

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.backbone.parameters())

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "train",
            "version": 1,
            "config": self.cfg,
            "genotype": self.genotype.to_dict() if self.genotype else None,
            "data": {
                "num_classes": self.bundle.num_classes,
                "in_channels": self.bundle.in_channels,
                "image_size": self.bundle.image_size,
                "mean": self.bundle.mean,
                "std": self.bundle.std,
            },
            "epoch": self.epoch,
            "step": self.step,
            "network": self.network.state_dict(),
            "opt": self.opt.state_dict(),
            "log": self.log,
            "seconds": self.seconds,
            "rng": get_rng_state(),
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        self.network.load_state_dict(ckpt["network"])
        self.opt.load_state_dict(ckpt["opt"])
        self.epoch, self.step, self.log = ckpt["epoch"], ckpt["step"], ckpt["log"]
        self.seconds = ckpt["seconds"]
        set_rng_state(ckpt["rng"])

    def save(self) -> None:
        if self.env.is_main:
            atomic_save(self.state_dict(), self.out / "checkpoint.pt")
        self.env.barrier()

    def evaluate(self) -> dict[str, float]:
        broadcast_buffers(self.network, self.env)
        return evaluate(self.network, self.val_loader.epoch_batches(0), self.env, self.cfg["amp"])

    def _done(self) -> bool:
        return self.epoch >= self.cfg["epochs"] or self.step >= self.total_steps

    def train_epoch(self) -> dict[str, Any]:
        cfg = self.cfg
        meter = Meter()
        n_steps = min(self.steps_per_epoch, self.total_steps - self.step)
        t_steps = 0.0
        label = f"{cfg['variant']}" + (
            f"/{cfg['fusion']}" if cfg["variant"] in VIDEO_VARIANTS else ""
        )
        bar = tqdm(
            range(n_steps),
            desc=f"{label} {self.epoch + 1}/{cfg['epochs']}",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        idx = self.train_loader._indices(self.epoch)
        self.network.train()
        for i in bar:
            set_lr(self.opt, cosine_lr(self.step, self.total_steps, cfg["lr"], cfg["lr_min"]))
            x, y = self.train_loader.batch(self.epoch, i, idx)
            t0 = time.perf_counter()
            loss, correct = weight_step(
                self.network.video, self.ddp_backbone, self.opt, x, y, cfg["grad_clip"], cfg["amp"]
            )
            if self.dev.type == "cuda":
                torch.cuda.synchronize(self.dev)
            t_steps += time.perf_counter() - t0
            self.step += 1
            meter.update(loss, correct, len(y))
            bar.set_postfix(
                loss=f"{meter.loss:.3f}", acc=f"{meter.acc:.3f}", s_step=f"{t_steps / (i + 1):.3f}"
            )
        bar.close()
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
        cfg = self.cfg
        while not self._done():
            t0 = time.perf_counter()
            stats = self.train_epoch()
            self.epoch += 1
            every = cfg["eval_every"]
            ev = self.evaluate() if self._done() or (every and self.epoch % every == 0) else None
            self.seconds += time.perf_counter() - t0
            row = {"epoch": self.epoch, **stats, "epoch_sec": time.perf_counter() - t0}
            if ev is not None:
                row.update(val_loss=ev["loss"], val_acc=ev["acc"])
            self.log.append(row)
            if self.env.is_main:
                msg = (
                    f"[{cfg['variant']}] epoch {self.epoch}: train loss {stats['train_loss']:.4f} "
                    f"acc {stats['train_acc']:.4f}"
                )
                if ev is not None:
                    msg += f" | val acc {ev['acc']:.4f}"
                print(msg + f" | {stats['sec_per_step']:.3f} s/step", file=sys.stderr, flush=True)
                write_log(self.log, self.out / "train_log")
            self.save()
        final = self.evaluate()
        result = self.result(final)
        if self.env.is_main:
            write_log(self.log, self.out / "train_log")
            if self.log:
                plot_curves(self.log, self.out / "curves.png", ("train", "val"))
            atomic_write_text(json.dumps(result, indent=1) + "\n", self.out / "result.json")
        self.env.barrier()
        return result

    def result(self, final: dict[str, float]) -> dict[str, Any]:
        cfg = self.cfg
        video = cfg["variant"] in VIDEO_VARIANTS
        accs = [r["val_acc"] for r in self.log if "val_acc" in r]
        steps = [r["sec_per_step"] for r in self.log]
        return {
            "variant": cfg["variant"],
            "seed": cfg["seed"],
            "fusion": cfg["fusion"] if video else "none",
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


def _load_bundle(cfg: dict[str, Any]) -> DataBundle:
    return load_data(
        cfg["data"],
        cfg["data_format"],
        cfg["image_size"],
        cfg["val_fraction"],
        0,
        cfg["limit_train"],
        cfg["limit_val"],
    )


def run_train(
    cfg: dict[str, Any], env: DistEnv | None = None, bundle: DataBundle | None = None
) -> dict[str, Any]:
    """Train (or resume / evaluate) one variant with config `cfg` (``vars()`` of the CLI)."""
    own_env = env is None
    env = env or init_distributed(cfg["device"])
    try:
        if cfg.get("threads"):
            torch.set_num_threads(cfg["threads"])
        if cfg.get("eval_only"):
            from das.evaluate import evaluate_checkpoint

            path = cfg.get("checkpoint") or str(Path(cfg["out"]) / "checkpoint.pt")
            return evaluate_checkpoint(path, cfg["device"], env=env, no_progress=cfg["no_progress"])
        ckpt_path = Path(cfg["out"]) / "checkpoint.pt"
        ckpt = None
        if cfg.get("resume") and ckpt_path.is_file():
            ckpt = load_checkpoint(ckpt_path, "train")
            saved = dict(ckpt["config"])
            saved.update({k: cfg[k] for k in RUNTIME_KEYS if k in cfg})
            cfg = saved
        if env.is_main:
            Path(cfg["out"]).mkdir(parents=True, exist_ok=True)
        genotype = (
            Genotype.from_dict(ckpt["genotype"])
            if ckpt and ckpt["genotype"]
            else _genotype(cfg["genotype"], cfg)
        )
        with ops_backend(cfg["ops_backend"]), deterministic(cfg.get("deterministic", False)):
            trainer = Trainer(cfg, env, bundle or _load_bundle(cfg), genotype)
            if ckpt is not None:
                trainer.load_state_dict(ckpt)
            return trainer.run()
    finally:
        if own_env:
            shutdown_distributed(env)


def _comma_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def ablation_runs(cfg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, config) of every --ablation run: variant x fusion (video variants) x seed, in
    OUT/<variant>[_<fusion>] (one seed) or OUT/<variant>[_<fusion>]/seed<S> (several)."""
    fusions = _comma_list(cfg["fusions"] or cfg["fusion"])
    seeds = [int(s) for s in _comma_list(cfg["seeds"])] if cfg.get("seeds") else [cfg["seed"]]
    runs = []
    for variant in _comma_list(cfg["variants"]):
        for fusion in fusions if variant in VIDEO_VARIANTS else ["none"]:
            tagged = variant in VIDEO_VARIANTS and len(fusions) > 1
            name = variant + (f"_{fusion}" if tagged else "")
            for seed in seeds:
                out = Path(cfg["out"]) / name / (f"seed{seed}" if len(seeds) > 1 else "")
                sub = dict(cfg, variant=variant, fusion=fusion, seed=seed, ablation=False)
                runs.append((name, dict(sub, out=str(out))))
    return runs


def _finished(sub: dict[str, Any]) -> dict[str, Any] | None:
    """The saved result of a finished run when resuming, else None (results written before
    they carried their seed or last training accuracy get them from the run and its log)."""
    done = Path(sub["out"]) / "result.json"
    if not (sub.get("resume") and done.is_file()):
        return None
    result = {"seed": sub["seed"], **json.loads(done.read_text())}
    log = done.with_name("train_log.json")
    if "train_acc" not in result and log.is_file():
        records = json.loads(log.read_text())
        result["train_acc"] = records[-1].get("train_acc") if records else None
    return result


def run_ablation(cfg: dict[str, Any], env: DistEnv | None = None) -> list[dict[str, Any]]:
    """Every run of ``ablation_runs`` (``cfg["jobs"]`` at once in separate processes, or one
    after another in this one, which may be a torchrun rank), then the tables."""
    runs = ablation_runs(cfg)
    if cfg.get("jobs", 1) > 1:
        results = _run_parallel(runs, cfg["jobs"])
        write_ablation(results, Path(cfg["out"]), cfg)
        return results
    own_env = env is None
    env = env or init_distributed(cfg["device"])
    try:
        bundle = _load_bundle(cfg)
        results = []
        for name, sub in runs:
            result = _finished(sub)
            if result is None:
                if env.is_main:
                    print(f"== ablation: {name} seed {sub['seed']}", file=sys.stderr, flush=True)
                result = run_train(sub, env, bundle)
            results.append(result)
        if env.is_main:
            write_ablation(results, Path(cfg["out"]), cfg)
        return results
    finally:
        if own_env:
            shutdown_distributed(env)


def _run_parallel(runs: list[tuple[str, dict[str, Any]]], jobs: int) -> list[dict[str, Any]]:
    """run_train of each run in a pool of `jobs` spawned processes (CUDA-safe); results in
    the order of `runs`. A failed run stops the others and raises (--resume continues)."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    results: list[dict[str, Any] | None] = [_finished(sub) for _, sub in runs]
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
    try:
        pending = {}
        for i, (_, sub) in enumerate(runs):
            if results[i] is None:
                sub = dict(sub, no_progress=True, threads=sub.get("threads") or threads)
                pending[pool.submit(run_train, sub)] = i
        print(
            f"== ablation: {len(pending)} runs, {jobs} at a time ({len(runs) - len(pending)} "
            "already finished)",
            file=sys.stderr,
            flush=True,
        )
        for future in as_completed(pending):
            i = pending[future]
            results[i] = future.result()
            name, sub = runs[i]
            print(
                f"== ablation: {name} seed {sub['seed']} done: val acc {results[i]['val_acc']:.4f}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        pool.shutdown(cancel_futures=True)
    return results


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def _pm(values: list[float]) -> str:
    mean, sd = _mean_sd(values)
    return f"{mean:.2f}" if sd is None else f"{mean:.2f} ± {sd:.2f}"


def _groups(results: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Results by (variant, fusion), in first-seen order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["variant"], r["fusion"]), []).append(r)
    return groups


def _paired_differences(groups: dict[tuple[str, str], list[dict[str, Any]]]) -> list[list[str]]:
    """Rows (das fusion, other variant, other fusion, seeds, das - other in val acc points,
    wins) over the seeds both have."""
    rows = []
    for (variant, fusion), das_runs in groups.items():
        if variant != "das":
            continue
        das_acc = {r["seed"]: 100 * r["val_acc"] for r in das_runs}
        for (other, other_fusion), runs in groups.items():
            if other == "das":
                continue
            diffs = [das_acc[r["seed"]] - 100 * r["val_acc"] for r in runs if r["seed"] in das_acc]
            if diffs:
                wins = f"{sum(d > 0 for d in diffs)}/{len(diffs)}"
                rows.append([fusion, other, other_fusion, len(diffs), _pm(diffs), wins])
    return rows


def write_ablation(results: list[dict[str, Any]], out: Path, cfg: dict[str, Any]) -> None:
    """ablation.json (every run) and ablation.md: one row per (variant, fusion), val acc mean
    +- sample sd over seeds, and DAS's differences paired by seed."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(results, indent=1) + "\n", out / "ablation.json")
    groups = _groups(results)
    rows = []
    for (variant, fusion), runs in groups.items():
        accs = [100 * r["val_acc"] for r in runs]
        train_accs = [100 * r["train_acc"] for r in runs if r.get("train_acc") is not None]
        rows.append(
            [
                variant,
                fusion,
                runs[0]["frames"],
                runs[0]["params"],
                runs[0]["steps"],
                ", ".join(str(r["seed"]) for r in runs),
                _pm(accs),
                ", ".join(f"{a:.2f}" for a in accs),
                _pm([100 * r["best_val_acc"] for r in runs]),
                _pm(train_accs) if train_accs else "-",
                _mean_sd([r["sec_per_step"] for r in runs])[0],
                sum(r["train_seconds"] for r in runs),
            ]
        )
    budget = f"{cfg['epochs']} epochs" + (
        f", at most {cfg['max_steps']} steps" if cfg["max_steps"] else ""
    )
    header = ["variant", "fusion", "T", "params", "steps", "seeds", "val acc %"]
    header += ["per seed", "best val acc %", "last train acc %", "s/step", "train s (all seeds)"]
    lines = [
        "# DAS ablation",
        "",
        f"- data: {results[0]['data'] if results else cfg['data']}",
        f"- arch: {cfg['arch']} (width x{cfg['width_mult']}), budget: {budget}, "
        f"batch {cfg['batch_size']}",
        f"- genotype: {cfg['genotype']}",
        "",
        markdown_table(header, rows),
        "",
        "val acc: final validation accuracy, mean ± sample sd over the seeds; last train acc: "
        "training accuracy over the last epoch, on augmented inputs (above val acc: the "
        "networks overfit; below: they still underfit).",
    ]
    paired = _paired_differences(groups)
    if paired:
        lines += [
            "",
            "DAS minus each variant, paired by seed (val acc points; > 0: DAS is better):",
            "",
            markdown_table(
                ["das fusion", "variant", "fusion", "seeds", "difference", "DAS wins"], paired
            ),
        ]
    lines += [
        "",
        "Variants: baseline = 2D network on the image; augment = DAS transforms as 2D random "
        "augmentation (one random frame); replica = T identical frames + fusion; das = the "
        "genotype's video + fusion; shuffle = DAS frames in random order + fusion.",
        "",
    ]
    atomic_write_text("\n".join(lines), out / "ablation.md")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.eval_only:
        cli.check_common(parser, args)
    cfg = vars(args).copy()
    if args.genotype not in (None, "random"):
        try:
            Genotype.load(args.genotype)
        except (FileNotFoundError, ValueError) as exc:
            parser.error(f"--genotype: {exc}")
    if args.ablation:
        variants = _comma_list(args.variants)
        bad = [v for v in variants if v not in VARIANTS]
        if bad or not variants:
            parser.error(f"--variants: unknown {bad}; choose from {', '.join(VARIANTS)}")
        for f in _comma_list(args.fusions or args.fusion):
            reason = cli.fusion_unavailable_reason(f)
            if reason:
                parser.error(f"--fusions: {reason}")
        if any(v in NEEDS_GENOTYPE for v in variants) and args.genotype is None:
            parser.error(
                "--ablation with das/augment/shuffle needs --genotype (a genotype.json or 'random')"
            )
        if args.seeds is not None:
            seeds = _comma_list(args.seeds)
            if not seeds or not all(s.isdigit() for s in seeds) or len(set(seeds)) < len(seeds):
                parser.error(f"--seeds: expected distinct non-negative integers: {args.seeds!r}")
        if args.jobs > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            parser.error("--jobs runs several processes itself; under torchrun use --jobs 1")
    elif args.seeds is not None or args.jobs > 1:
        parser.error("--seeds and --jobs are options of --ablation")
    elif not args.eval_only and args.variant in NEEDS_GENOTYPE and args.genotype is None:
        resumable = args.resume and (Path(args.out) / "checkpoint.pt").is_file()
        if not resumable:
            parser.error(
                f"--variant {args.variant} needs --genotype (a genotype.json from "
                "das.search, or 'random')"
            )
    if args.eval_only:
        path = Path(args.checkpoint or Path(args.out) / "checkpoint.pt")
        if not path.is_file():
            parser.error(f"--eval-only: checkpoint not found: {path}")
    try:
        if args.ablation:
            run_ablation(cfg)
            if int(os.environ.get("RANK", "0")) == 0:
                print((Path(args.out) / "ablation.md").read_text())
        else:
            result = run_train(cfg)
            if int(os.environ.get("RANK", "0")) == 0:
                print(json.dumps(result, indent=1))
    except DataError as exc:
        parser.error(f"--data: {exc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
