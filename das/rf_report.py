"""``python -m das.rf CKPT [CKPT ...] --out DIR``: receptive fields of trained networks.

For each ``das.train`` checkpoint: the effective receptive field (``das.rf.effective_rf``) of
the central unit at ``--stage`` over ``--images`` seeded validation images, with the trained
and with freshly initialised (``--random``) weights; Eq. 8's theoretical field at that stage,
and the field reshaped by the cell (the union of per-frame fields over the frames the unit
mixes and every path of the cell, mapped into the image). Writes ``rf.json`` (every number
with a 95 % percentile-bootstrap interval over the images; the Jensen-Shannon divergence
from the baseline's map when a ``baseline`` checkpoint is among them, and, as its noise floor,
the divergence between the maps of the even and the odd images of the same run — the
plug-in divergence is biased upwards, so a resampled interval can sit above the value itself;
a field is reshaped beyond noise when its divergence from the baseline clearly exceeds both
runs' split-half floors) and three pictures:
``rf_grid.png`` (Fig. 1b: per checkpoint its frames of one image beside its map),
``rf_compare.png`` (Fig. 8: image | baseline | checkpoint | difference) and
``rf_profile.png`` (mass within a radius).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from das import session
from das.cell import DiscreteCell, Genotype, ReplicaCell
from das.config import RunConfig
from das.data import DataError
from das.rf import (
    bootstrap,
    effective_rf,
    js_divergence,
    layer_specs,
    reshaped_field,
    rf_metrics,
    temporal_modules_passed,
    theoretical_rf,
)
from das.runtime import DistEnv, atomic_write_text, load_checkpoint, resolve_device
from das.unwarp import path_terms
from das_kernels.affine import to_pixel_matrix

__all__ = ["main", "receptive_fields"]

STAGES = {"layer1": 1, "layer2": 2, "layer3": 3, "layer4": 4}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m das.rf", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("checkpoints", nargs="+", help="das.train checkpoint.pt files")
    p.add_argument("--out", default="runs/rf", help="output directory (default runs/rf)")
    p.add_argument("--stage", choices=tuple(STAGES), default="layer3", help="default layer3")
    p.add_argument("--images", type=int, default=64, help="validation images (default 64)")
    p.add_argument("--upsample", type=float, default=1.0, help="image scale factor (default 1)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap draws (default 200)")
    p.add_argument("--random", action="store_true", help="also with untrained (random) weights")
    p.add_argument("--data", default=None, help="data path (default: the checkpoint's)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    return p


def _unit_matrices(cell: Any, frames: int, mixed: int, H: int, W: int) -> Tensor:
    """Pixel matrices about the image centre of every (path, frame) the central unit mixes."""
    centre = frames // 2
    lo, hi = max(0, centre - (mixed - 1) // 2), min(frames, centre + (mixed - 1) // 2 + 1)
    if isinstance(cell, DiscreteCell):
        edges = cell.genotype.edges
        theta, _ = path_terms(edges, cell.nodes, cell.theta, cell.one.expand(len(edges), 1))
        theta = theta[:, lo:hi].flatten(0, 1)
    else:  # baseline, replica, bigkernel, dilated: nothing moves
        theta = torch.eye(2, 3).expand(1, 2, 3)
    m = to_pixel_matrix(theta.double(), H, W)
    c = m.new_tensor([(W - 1) / 2, (H - 1) / 2])
    shift = m[..., :2] @ c + m[..., 2] - c
    return torch.cat([m[..., :2], shift[..., None]], -1)


def _inner_cell(network: Any) -> Any:
    """The DiscreteCell inside a variant's cell (augment and shuffle wrap it), or None."""
    cell = network.cell
    while cell is not None and not isinstance(cell, (DiscreteCell, ReplicaCell)):
        cell = getattr(cell, "cell", None)
    return cell


def _stage_features(network: Any, stage: int):
    backbone = network.backbone

    def features(x: Tensor) -> Tensor:
        f = backbone.stem(network.video(x).flatten(0, 1))
        for block_stage in list(backbone.stages)[:stage]:
            f = backbone.run_stage(block_stage, f)
        return f

    return features


def _network(cfg: RunConfig, ckpt: dict[str, Any], meta: Any, aspect: float, weights: bool):
    genotype = Genotype.from_dict(ckpt["genotype"]) if ckpt["genotype"] else None
    network = session.variant_network(cfg, genotype, meta, aspect)
    if weights:
        network.load_state_dict(ckpt["network"])
    return network.eval()


def receptive_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Compute everything ``rf.json`` holds (and the maps for the pictures)."""
    env = DistEnv(device=resolve_device(args.device))
    stage = STAGES[args.stage]
    runs = []
    for path in args.checkpoints:
        ckpt = load_checkpoint(path, "train")
        cfg = RunConfig.from_dict(ckpt.get("config"), where=f"{path}: config")
        bundle = session.load_bundle(cfg.data, source=args.data)
        meta = session.DataMeta.from_dict(ckpt["data"])
        aspect = bundle.train.x.shape[-1] / bundle.train.x.shape[-2]
        loader = session.eval_loader(bundle.val, args.images, meta.mean, meta.std, env)
        images, _ = next(iter(loader.epoch_batches(0)))
        images = images[: args.images]
        if args.upsample != 1:
            images = F.interpolate(images, scale_factor=args.upsample, mode="bilinear")
        H, W = images.shape[-2:]
        run: dict[str, Any] = {"checkpoint": str(path), "variant": cfg.train.variant}
        for kind in ("trained", "random") if args.random else ("trained",):
            torch.manual_seed(args.seed)
            network = _network(cfg, ckpt, meta, aspect, kind == "trained").to(env.device)
            frames = network.video(images[:1].to(env.device)).shape[1]
            maps = effective_rf(_stage_features(network, stage), images.to(env.device), frames)
            run[kind] = {"maps": maps.cpu()}
        backbone = network.backbone
        r0 = theoretical_rf(layer_specs(backbone, stage))
        modules = temporal_modules_passed(backbone, stage)
        mixed = min(frames, 1 + 2 * modules)
        area, _ = reshaped_field(r0, _unit_matrices(_inner_cell(network), frames, mixed, H, W))
        run.update(
            stage=args.stage,
            frames=frames,
            theoretical_rf=r0,
            temporal_modules=modules,
            frames_mixed=mixed,
            reshaped_area=area,
            square_area=float(r0 * r0),
            image=images[0].cpu(),
            video=network.video(images[:1].to(env.device))[0].detach().cpu(),
        )
        runs.append(run)
    baseline = next((r for r in runs if r["variant"] == "baseline"), None)
    for run in runs:
        for kind in ("trained", "random"):
            if kind not in run:
                continue
            part = run[kind]
            part["metrics"] = bootstrap(part["maps"], rf_metrics, args.bootstrap, args.seed)
            maps = part["maps"]
            if len(maps) > 1:  # the divergence image sampling alone gives: a noise floor
                part["js_split_half"] = js_divergence(maps[0::2].mean(0), maps[1::2].mean(0))
            if baseline is not None and run is not baseline and kind in baseline:
                pair = torch.stack([part["maps"], baseline[kind]["maps"]], 1)
                part["js_vs_baseline"] = bootstrap(
                    pair, lambda m: {"js": js_divergence(m[0], m[1])}, args.bootstrap, args.seed
                )["js"]
    return {"runs": runs, "baseline": baseline["checkpoint"] if baseline else None}


def _json(result: dict[str, Any], args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    keep = ("checkpoint", "variant", "stage", "frames", "theoretical_rf", "temporal_modules")
    keep += ("frames_mixed", "reshaped_area", "square_area")
    out = []
    for run in result["runs"]:
        row = {k: run[k] for k in keep}
        for kind in ("trained", "random"):
            if kind in run:
                part = run[kind]
                row[kind] = {
                    name: {"value": v, "low": lo, "high": hi}
                    for name, (v, lo, hi) in part["metrics"].items()
                }
                if "js_vs_baseline" in part:
                    v, lo, hi = part["js_vs_baseline"]
                    row[kind]["js_vs_baseline"] = {"value": v, "low": lo, "high": hi}
                if "js_split_half" in part:
                    row[kind]["js_split_half"] = part["js_split_half"]
        out.append(row)
    return {
        "command": "python -m das.rf " + " ".join(argv),
        "images": args.images,
        "bootstrap": args.bootstrap,
        "upsample": args.upsample,
        "baseline": result["baseline"],
        "runs": out,
    }


def _show(image: Tensor) -> Tensor:
    image = image.float()
    image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-12)
    return image.permute(1, 2, 0).squeeze(-1).numpy()


def plot(result: dict[str, Any], out: Path) -> list[Path]:
    """rf_grid.png, rf_compare.png, rf_profile.png."""
    from das.report import plt_module

    plt = plt_module()
    runs = result["runs"]
    paths = []
    frames = max(r["frames"] for r in runs)
    fig, axes = plt.subplots(len(runs), frames + 1, figsize=(2 * (frames + 1), 2 * len(runs)),
                             squeeze=False)  # fmt: skip
    for row, run in zip(axes, runs):
        for t in range(frames):
            row[t].axis("off")
            if t < run["video"].shape[0]:
                row[t].imshow(_show(run["video"][t]), cmap="gray")
        row[-1].imshow(run["trained"]["maps"].mean(0).numpy(), cmap="inferno")
        row[-1].set_title(f"{run['variant']} ERF", fontsize=8)
        row[-1].axis("off")
        row[0].set_title(run["variant"], fontsize=8)
    fig.tight_layout()
    paths.append(out / "rf_grid.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    baseline = next((r for r in runs if r["variant"] == "baseline"), None)
    others = [r for r in runs if r is not baseline]
    if baseline is not None and others:
        fig, axes = plt.subplots(len(others), 4, figsize=(8, 2 * len(others)), squeeze=False)
        base = baseline["trained"]["maps"].mean(0)
        for row, run in zip(axes, others):
            mine = run["trained"]["maps"].mean(0)
            diff = mine / mine.sum() - base / base.sum()
            span = float(diff.abs().max()) or 1.0
            row[0].imshow(_show(run["image"]), cmap="gray")
            row[1].imshow(base.numpy(), cmap="inferno")
            row[2].imshow(mine.numpy(), cmap="inferno")
            row[3].imshow(diff.numpy(), cmap="coolwarm", vmin=-span, vmax=span)
            for ax, title in zip(row, ("image", "baseline", run["variant"], "difference")):
                ax.set_title(title, fontsize=8)
                ax.axis("off")
        fig.tight_layout()
        paths.append(out / "rf_compare.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for run in runs:
        m = run["trained"]["maps"].mean(0).double()
        H, W = m.shape
        yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        radius = (((yy - (H - 1) / 2) ** 2 + (xx - (W - 1) / 2) ** 2).sqrt()).flatten()
        order = radius.argsort()
        mass = (m.flatten()[order] / m.sum()).cumsum(0)
        ax.plot(radius[order].numpy(), mass.numpy(), label=run["variant"])
    ax.set_xlabel("radius (pixels)")
    ax.set_ylabel("gradient mass within")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "rf_profile.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.images < 1 or args.bootstrap < 1 or args.upsample <= 0:
        parser.error("--images and --bootstrap must be >= 1 and --upsample > 0")
    try:
        result = receptive_fields(args)
    except (FileNotFoundError, ValueError, DataError) as exc:
        parser.exit(2, f"python -m das.rf: error: {exc}\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = _json(result, args, argv)
    atomic_write_text(json.dumps(payload, indent=2) + "\n", out / "rf.json")
    pictures = plot(result, out)
    for run in payload["runs"]:
        m = run["trained"]
        js = m.get("js_vs_baseline")
        print(
            f"{run['variant']:<10} r0 {run['theoretical_rf']} reshaped area "
            f"{run['reshaped_area']:.0f} (square {run['square_area']:.0f}); ERF r50 "
            f"{m['r50']['value']:.2f} [{m['r50']['low']:.2f}, {m['r50']['high']:.2f}] "
            f"anisotropy {m['anisotropy']['value']:.2f}"
            + (
                f"; JS vs baseline {js['value']:.4f} [{js['low']:.4f}, {js['high']:.4f}]"
                if js
                else ""
            )
            + (f", split-half floor {m['js_split_half']:.4f}" if "js_split_half" in m else "")
        )
    print(f"wrote {out / 'rf.json'}, " + ", ".join(p.name for p in pictures))
    return 0
