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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from das import session
from das.cell import DiscreteCell, Genotype, ReplicaCell
from das.config import RunConfig
from das.data import DataError
from das.models import VideoNetwork
from das.rf import (
    bootstrap,
    effective_rf,
    js_divergence,
    layer_geometry,
    reshaped_field,
    rf_metrics,
    temporal_modules_passed,
    theoretical_rf,
    unit_centre,
)
from das.runtime import DistEnv, atomic_write_text, load_checkpoint, resolve_device
from das.unwarp import path_terms
from das_kernels.affine import to_pixel_matrix

__all__ = [
    "main",
    "markdown",
    "receptive_fields",
    "search_fields",
    "write_search_fields",
    "write_train_fields",
]

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


def _unit_matrices(cell: Any, frames: int, modules: int, H: int, W: int) -> Tensor:
    """Pixel matrices about the image centre of every (path, frame) the central unit mixes:
    the frames within ``modules`` (temporal modules passed) of the middle frame T//2."""
    centre = frames // 2
    lo, hi = max(0, centre - modules), min(frames, centre + modules + 1)
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
    network = session.variant_network(cfg, genotype, meta, aspect, augment=False)
    if weights:
        network.load_state_dict(ckpt["network"])
    return network.eval()


def _measure(
    variant: str,
    make: Callable[[str], nn.Module],
    images: Tensor,
    stage: int,
    kinds: Sequence[str],
    seed: int,
) -> dict[str, Any]:
    """ERF maps of ``make(kind)`` (an eval-mode network; kind trained / random) and the
    fields of its backbone: Eq. 8, the reshaped area, the unit's centre in the image."""
    run: dict[str, Any] = {"variant": variant}
    for kind in kinds:
        torch.manual_seed(seed)
        network = make(kind)
        features = _stage_features(network, stage)
        with torch.no_grad():
            video = network.video(images[:1])
            h, w = features(images[:1]).shape[-2:]
        frames = video.shape[1]
        run[kind] = {"maps": effective_rf(features, images, frames).cpu()}
    backbone = network.backbone
    geometry = layer_geometry(backbone, stage)
    r0 = theoretical_rf([(k, s) for k, s, _ in geometry])
    modules = temporal_modules_passed(backbone, stage)
    mixed = min(frames, 1 + 2 * modules)
    H, W = images.shape[-2:]
    area, _ = reshaped_field(r0, _unit_matrices(_inner_cell(network), frames, modules, H, W))
    run.update(
        stage=f"layer{stage}",
        frames=frames,
        theoretical_rf=r0,
        temporal_modules=modules,
        frames_mixed=mixed,
        reshaped_area=area,
        square_area=float(r0 * r0),
        centre=(unit_centre(geometry, h // 2), unit_centre(geometry, w // 2)),
        image=images[0].cpu(),
        video=video[0].detach().cpu(),
    )
    return run


def _summarise(
    runs: list[dict[str, Any]], reference: dict[str, Any] | None, samples: int, seed: int
) -> None:
    """Adds to every run its metrics with bootstrap intervals, its split-half divergence
    floor and its divergence from `reference` (the 2D baseline, or the replica cell)."""
    for run in runs:
        for kind in ("trained", "random"):
            if kind not in run:
                continue
            part, centre = run[kind], run["centre"]
            maps = part["maps"]
            part["metrics"] = bootstrap(maps, lambda m, c=centre: rf_metrics(m, c), samples, seed)
            if len(maps) > 1:  # the divergence image sampling alone gives: a noise floor
                part["js_split_half"] = js_divergence(maps[0::2].mean(0), maps[1::2].mean(0))
            if reference is not None and run is not reference and kind in reference:
                pair = torch.stack([maps, reference[kind]["maps"]], 1)
                part["js_vs_baseline"] = bootstrap(
                    pair, lambda m: {"js": js_divergence(m[0], m[1])}, samples, seed
                )["js"]


def receptive_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Compute everything ``rf.json`` holds (and the maps for the pictures)."""
    env = DistEnv(device=resolve_device(args.device))
    stage = STAGES[args.stage]
    kinds = ("trained", "random") if args.random else ("trained",)
    runs = []
    for path in args.checkpoints:
        ckpt = load_checkpoint(path, "train")
        cfg = RunConfig.from_dict(ckpt.get("config"), where=f"{path}: config")
        bundle = session.load_bundle(cfg.data, source=args.data)
        meta = session.DataMeta.from_dict(ckpt["data"])
        aspect = bundle.train.x.shape[-1] / bundle.train.x.shape[-2]
        images = _images(bundle.val, args.images, meta.mean, meta.std, env, args.upsample)

        def make(kind: str, cfg=cfg, ckpt=ckpt, meta=meta, aspect=aspect) -> nn.Module:
            return _network(cfg, ckpt, meta, aspect, kind == "trained").to(env.device)

        run = _measure(cfg.train.variant, make, images, stage, kinds, args.seed)
        runs.append({"checkpoint": str(path), **run})
    baseline = next((r for r in runs if r["variant"] == "baseline"), None)
    _summarise(runs, baseline, args.bootstrap, args.seed)
    return {
        "runs": runs,
        "baseline": baseline["checkpoint"] if baseline else None,
        "reference": baseline,
    }


def _images(
    images: Any, n: int, mean: Any, std: Any, env: DistEnv, upsample: float = 1.0
) -> Tensor:
    """The first `n` images of the set, normalised (and scaled by `upsample`), on the device."""
    loader = session.eval_loader(images, n, mean, std, env)
    x, _ = next(iter(loader.epoch_batches(0)))
    x = x[:n]
    if upsample != 1:
        x = F.interpolate(x, scale_factor=upsample, mode="bilinear")
    return x.to(env.device)


def _json(result: dict[str, Any], args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    keep = ("checkpoint", "variant", "stage", "frames", "theoretical_rf", "temporal_modules")
    keep += ("frames_mixed", "reshaped_area", "square_area", "centre")
    out = []
    for run in result["runs"]:
        row = {k: run[k] for k in keep if k in run}
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
        "command": getattr(args, "command", None) or "python -m das.rf " + " ".join(argv),
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
    baseline = result.get("reference")
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
            titles = ("image", baseline["variant"], run["variant"], "difference")
            for ax, title in zip(row, titles):
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
        cy, cx = run["centre"]
        radius = (((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()).flatten()
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


def write_outputs(
    result: dict[str, Any], args: argparse.Namespace, argv: Sequence[str], out: Path
) -> dict[str, Any]:
    """rf.json and the pictures in `out`; prints one line per run; returns rf.json's dict."""
    out.mkdir(parents=True, exist_ok=True)
    payload = _json(result, args, list(argv))
    payload["pictures"] = [p.name for p in plot(result, out)]
    atomic_write_text(json.dumps(payload, indent=2) + "\n", out / "rf.json")
    reference = result.get("reference")
    against = reference["variant"] if reference else "baseline"
    for run in payload["runs"]:
        m = run["trained"]
        js = m.get("js_vs_baseline")
        print(
            f"{run['variant']:<12} r0 {run['theoretical_rf']} reshaped area "
            f"{run['reshaped_area']:.0f} (square {run['square_area']:.0f}); ERF r50 "
            f"{m['r50']['value']:.2f} [{m['r50']['low']:.2f}, {m['r50']['high']:.2f}] "
            f"anisotropy {m['anisotropy']['value']:.2f}"
            + (
                f"; JS vs {against} {js['value']:.4f} [{js['low']:.4f}, {js['high']:.4f}]"
                if js
                else ""
            )
            + (f", split-half floor {m['js_split_half']:.4f}" if "js_split_half" in m else ""),
            file=sys.stderr,
        )
    print(f"wrote {out / 'rf.json'}, " + ", ".join(payload["pictures"]), file=sys.stderr)
    return payload


def markdown(payload: dict[str, Any], folder: str, title: str = "Receptive fields") -> str:
    """A report section: the numbers of rf.json as a table and its pictures (in `folder`,
    relative to the report)."""
    from das.report import markdown_table

    def interval(v: dict[str, float] | None, digits: int = 2) -> str:
        if v is None:
            return "-"
        return f"{v['value']:.{digits}f} [{v['low']:.{digits}f}, {v['high']:.{digits}f}]"

    rows = []
    for run in payload["runs"]:
        m = run["trained"]
        floor = m.get("js_split_half")
        rows.append(
            (
                run["variant"],
                run["theoretical_rf"],
                f"{run['reshaped_area']:.0f}",
                interval(m["r50"]),
                interval(m["anisotropy"]),
                interval(m.get("js_vs_baseline"), 4),
                "-" if floor is None else f"{floor:.4f}",
            )
        )
    header = ("run", "Eq. 8 r0", "reshaped area", "ERF r50", "anisotropy", "JS vs reference",
              "split-half floor")  # fmt: skip
    lines = [
        f"## {title}",
        "",
        f"`{payload['command']}` ({payload['images']} images, stage "
        f"{payload['runs'][0]['stage']}; 95 % bootstrap intervals over the images). A field "
        "is reshaped beyond noise when its JS divergence from the reference clearly exceeds "
        "the split-half floors (the divergence image sampling alone gives).",
        "",
        markdown_table(header, rows),
        "",
    ]
    lines += [f"![{name}]({folder}/{name})" for name in payload.get("pictures", [])]
    return "\n".join(lines) + "\n"


def append_section(report: Path, section: str) -> None:
    """Appends `section` to the Markdown file `report` (atomically)."""
    text = report.read_text() if report.is_file() else ""
    atomic_write_text(text.rstrip("\n") + "\n\n" + section, report)


def search_fields(searcher: Any, genotype: Genotype, images: int = 64) -> dict[str, Any]:
    """Fig. 1b for a finished search: the ERF of the searched backbone (trained weights) fed
    by the cell of each single-op genotype (every edge that op, the searched magnitudes), by
    the searched genotype, and by the all-identity genotype (the reference: the same frames
    T times, with the same intensity gain as every other row, which the backbone's
    BatchNorm statistics expect)."""
    cell, backbone, bundle = searcher.cell, searcher.backbone, searcher.bundle
    aspect = bundle.train.x.shape[-1] / bundle.train.x.shape[-2]
    E = len(cell.edges)

    def single(op: str) -> Genotype:
        k = cell.ops.index(op) if op in cell.ops else None
        mags = [float(cell.magnitudes[e, k]) for e in range(E)] if k is not None else []
        return Genotype((op,) * E, cell.nodes, cell.frames, tuple(mags), cell.mode, cell.ops)

    rows = [("identity", single("identity"))]
    rows += [(op, single(op)) for op in cell.ops if op != "identity"]
    rows += [("genotype", genotype)]
    x = _images(bundle.val, images, bundle.mean, bundle.std, searcher.env)
    stage = STAGES["layer3"]
    was_training = backbone.training
    runs = []
    try:
        for name, g in rows:
            network = VideoNetwork(DiscreteCell(g, aspect, bundle.mean, bundle.std), backbone)
            network = network.to(x.device).eval()
            runs.append(_measure(name, lambda _, n=network: n, x, stage, ("trained",), 0))
    finally:
        backbone.train(was_training)
    _summarise(runs, runs[0], 200, 0)
    return {"runs": runs, "baseline": "identity", "reference": runs[0]}


def write_search_fields(searcher: Any, result: dict[str, Any], images: int = 64) -> None:
    """``das.search --rf``: OUT/rf/ (rf.json, pictures) and a section of OUT/report.md."""
    out = searcher.out / "rf"
    fields = search_fields(searcher, result["genotype"], images)
    command = f"das.search --rf: the searched backbone of {searcher.out}"
    args = argparse.Namespace(images=images, bootstrap=200, upsample=1.0, command=command)
    payload = write_outputs(fields, args, [], out)
    section = markdown(payload, "rf", "Receptive fields of the searched backbone (Fig. 1b)")
    append_section(searcher.out / "report.md", section)


def write_train_fields(checkpoints: Sequence[Path], out: Path, report: Path | None) -> None:
    """``das.train --rf``: ``python -m das.rf`` on the run's (or the ablation's) checkpoints
    into `out`, and its section appended to `report` (ablation.md) or written to
    ``out/rf.md``."""
    argv = [str(p) for p in checkpoints] + ["--out", str(out)]
    args = _parser().parse_args(argv)
    payload = write_outputs(receptive_fields(args), args, argv, out)
    folder = "rf" if report is not None else "."
    section = markdown(payload, folder)
    if report is not None:
        append_section(report, section)
    else:
        atomic_write_text(section, out / "rf.md")


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
    write_outputs(result, args, argv, Path(args.out))
    return 0
