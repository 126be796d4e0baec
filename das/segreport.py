"""The reports of ``--task segmentation``: prediction pictures (image | truth | each frame |
un-warped) and the search report with mIoU; the shared plots come from :mod:`das.report`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from das.cell import Genotype, genotype_video
from das.report import (
    markdown_table,
    mean_of,
    plot_curves,
    plot_selection,
    plot_tau,
    plot_video,
    plt_module,
    selection_table,
)
from das.runtime import atomic_write_text, backend_name
from das_kernels.affine import frame_steps

__all__ = ["plot_seg_predictions", "write_seg_predictions", "write_seg_search_report"]


def _label_image(labels: Any, classes: int) -> Any:
    """(H, W) class ids (255 = ignore, black) -> (H, W, 3) colours (tab20)."""
    import numpy as np

    plt = plt_module()
    colours = np.array([plt.get_cmap("tab20")(c % 20)[:3] for c in range(classes)])
    lab = labels.cpu().numpy()
    out = np.zeros((*lab.shape, 3))
    valid = lab < classes
    out[valid] = colours[lab[valid]]
    return out


def plot_seg_predictions(
    images: Any, masks: Any, frames: Any, unwarped: Any, classes: int, path: Path
) -> None:
    """One row per sample: image | ground truth | each frame's prediction (in the frame's
    own coordinates) | the un-warped prediction. ``images`` (N, 3, H, W) in [0, 1],
    ``masks`` and ``unwarped`` (N, H, W), ``frames`` (N, T, H, W) class ids."""
    plt = plt_module()
    n, t = frames.shape[:2]
    cols = t + 3
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.3 * n), squeeze=False)
    for r in range(n):
        panels = [images[r].clamp(0, 1).permute(1, 2, 0).cpu().numpy(), masks[r]]
        panels += [frames[r, k] for k in range(t)] + [unwarped[r]]
        titles = ["image", "truth"] + [f"frame {k}" for k in range(t)] + ["un-warped"]
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(panel if c == 0 else _label_image(panel, classes))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_seg_predictions(network: Any, images: Any, masks: Any, bundle: Any, path: Path) -> None:
    """``path``: predictions of `network` on pixel `images` (normalised with the bundle's
    statistics) next to their `masks` (see :func:`plot_seg_predictions`)."""
    import torch

    from das.segtask import predictions

    device = next(network.parameters()).device
    mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std).view(1, -1, 1, 1)
    frames, unwarped = predictions(network, ((images - mean) / std).to(device))
    plot_seg_predictions(images, masks, frames, unwarped, bundle.num_classes, path)


def write_seg_search_report(searcher: Any, result: dict[str, Any]) -> None:
    """A finished segmentation search's outputs: genotype.json, selection.json, tau.png,
    curves.png (loss and mIoU), selection.png (mIoU drops), video.png (the genotype's frames),
    predictions.png (image | truth | each frame's prediction | un-warped) and report.md."""
    out, cfg = searcher.out, searcher.cfg
    assert cfg.search is not None and cfg.cell is not None and cfg.task is not None
    from das.segtask import first_items

    genotype: Genotype = result["genotype"]
    genotype.save(out / "genotype.json")
    atomic_write_text(json.dumps(result["records"], indent=1) + "\n", out / "selection.json")
    plot_tau(searcher.log, searcher.cell.edges, out / "tau.png")
    plot_curves(searcher.log, out / "curves.png", ("train", "arch", "val"), "miou")
    if result["records"]:
        plot_selection(result["records"], out / "selection.png", "mIoU")
    bundle = searcher.bundle
    images, masks = first_items(bundle.val, 4)
    video = genotype_video(genotype, images, bundle.mean, bundle.std, bundle.aspect)
    plot_video(
        images,
        video,
        out / "video.png",
        [int(s) for s in frame_steps(genotype.frames, genotype.mode)],
    )
    write_seg_predictions(searcher.network, images, masks, bundle, out / "predictions.png")
    rows = [r for r in searcher.log if r["epoch"] > 0]
    steps = [r["sec_per_step"] for r in rows]
    t = cfg.task
    n_eval = len(searcher.eval_loader.data)
    lines = [
        "# DAS search report (segmentation)",
        "",
        f"- data: {bundle.describe()} (weights half {len(searcher.w_loader.data)}, "
        f"arch half {len(searcher.a_loader.data)})",
        f"- model: {cfg.model.arch} fusion={cfg.model.fusion} frames={cfg.model.frames} "
        f"nodes={cfg.cell.nodes} ops={list(searcher.cell.ops)}; head {t.head}, output stride "
        f"{t.output_stride}, aux weight {t.aux_weight}, un-warp averages {t.unwarp_average}",
        f"- search: {cfg.search.epochs} epochs x {searcher.steps_per_epoch} steps, "
        f"order {cfg.search.order}, batch {cfg.search.batch_size} x {searcher.env.world} "
        f"process(es), device {searcher.dev}, ops backend {cfg.runtime.ops_backend}",
        f"- das_kernels backend on {searcher.dev.type}: "
        f"{backend_name(searcher.dev, cfg.runtime.ops_backend)}",
        f"- time: search {searcher.seconds['search']:.1f} s, "
        f"selection {searcher.seconds['select']:.1f} s; "
        f"mean {sum(steps) / max(len(steps), 1):.4f} s per search step "
        f"(arch {mean_of(rows, 'sec_arch_step'):.4f} + "
        f"weights {mean_of(rows, 'sec_weight_step'):.4f})",
        f"- supernet after selection: val mIoU {result['final_val_acc']:.4f} "
        f"({n_eval} whole images of the arch half; one confusion matrix, ignore pixels "
        "excluded, classes absent from truth and prediction left out of the mean)",
        "",
        "## Genotype",
        "",
        markdown_table(
            ["edge", "from", "to", "op", "magnitude"],
            [
                [e, i, j, op, m]
                for e, ((i, j), op, m) in enumerate(
                    zip(genotype.edges, genotype.ops, genotype.magnitudes)
                )
            ],
        ),
        "",
        "The genotype's frames of four validation images, and the supernet's predictions after "
        "selection (image | truth | each frame's prediction, in the frame's coordinates | "
        "un-warped and averaged):",
        "",
        "![video](video.png)",
        "",
        "![predictions](predictions.png)",
        "",
        "## Per-epoch log",
        "",
        markdown_table(
            ["epoch", "train loss", "train mIoU", "arch loss", "arch mIoU", "val mIoU", "s/step"],
            [
                [
                    r["epoch"],
                    r["train_loss"],
                    r["train_miou"],
                    r["arch_loss"],
                    r["arch_miou"],
                    r.get("val_miou", float("nan")),
                    r["sec_per_step"],
                ]
                for r in rows
            ],
        ),
        "",
        "![curves](curves.png)",
        "",
        "## Architecture weights (softmax of tau) per edge",
        "",
        "![tau](tau.png)",
        "",
    ]
    if result["records"]:
        lines += [
            "## Perturbation selection",
            "",
            f"mIoU drop ({n_eval} images of the arch half) when each op of an edge is masked; "
            "the op whose removal hurts most is kept (ties: the larger loss increase). In "
            "selection.json, base_acc / op_acc hold mIoU. mIoU is a whole-set score with no "
            "per-image value, so the drops carry no standard errors and no within-noise flag "
            "(classification searches have both). Edges in selection order.",
            "",
            selection_table(result["records"], list(searcher.cell.ops), "mIoU"),
            "",
            "![selection](selection.png)",
            "",
        ]
    atomic_write_text("\n".join(lines), out / "report.md")
