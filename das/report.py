"""Logs, plots (matplotlib Agg) and Markdown reports for search, train and ablations:
everything a run writes for people to read. :func:`write_search_report` writes a finished
search's outputs, :func:`write_ablation_report` the ablation tables."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from das.cell import Genotype, genotype_video
from das.config import RunConfig
from das.runtime import atomic_write_text, backend_name
from das_kernels.affine import frame_steps

if TYPE_CHECKING:  # a Searcher is handed in, never built here
    from das.search import Searcher

__all__ = [
    "markdown_table",
    "plot_curves",
    "plot_selection",
    "selection_table",
    "plot_tau",
    "plot_video",
    "write_ablation_report",
    "write_log",
    "write_search_report",
]


def plt_module():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_log(
    rows: list[dict[str, Any]],
    stem: Path,
    matrices: Sequence[str] = ("tau", "weights"),
    index: str = "e",
) -> None:
    """``stem.json`` (full rows, nested values kept) and ``stem.csv`` (scalars + flattened
    `matrices` ``{"ops", "values"}`` as ``tau_e<edge>_<op>`` columns; `index` names the row
    kind, e.g. ``l`` for DRA's layers)."""
    atomic_write_text(json.dumps(rows, indent=1) + "\n", stem.with_suffix(".json"))
    flat_rows = []
    for row in rows:
        flat: dict[str, Any] = {}
        for key, value in row.items():
            if key in matrices and isinstance(value, dict):
                for e, per_op in enumerate(value["values"]):
                    for op, v in zip(value["ops"], per_op):
                        flat[f"{key}_{index}{e}_{op}"] = round(v, 6)
            elif not isinstance(value, (dict, list)):
                flat[key] = value
        flat_rows.append(flat)
    fields: list[str] = []
    for r in flat_rows:
        fields += [k for k in r if k not in fields]
    tmp = stem.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(flat_rows)
    tmp.replace(stem.with_suffix(".csv"))


def plot_tau(rows: list[dict[str, Any]], edges: Sequence[tuple[int, int]], path: Path) -> None:
    """softmax(tau) of every op per edge over epochs (epoch 0 = initialisation)."""
    plt = plt_module()
    n = len(edges)
    cols = min(5, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
    epochs = [r["epoch"] for r in rows]
    ops = rows[0]["weights"]["ops"]
    for e, (i, j) in enumerate(edges):
        ax = axes[e // cols][e % cols]
        for k, op in enumerate(ops):
            ax.plot(epochs, [r["weights"]["values"][e][k] for r in rows], label=op, marker=".")
        ax.set_title(f"edge {e}: {i}->{j}", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    for e in range(n, nrows * cols):
        axes[e // cols][e % cols].axis("off")
    axes[0][0].set_ylabel("softmax(tau)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(ops), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_selection(records: list[dict[str, Any]], path: Path, metric: str = "accuracy") -> None:
    """Per edge, the validation-accuracy (or `metric`) drop when each op is masked (chosen
    op hatched)."""
    plt = plt_module()
    records = sorted(records, key=lambda r: r["edge"])
    ops = list(records[0]["op_acc"])
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(records) * len(ops) / 3), 3.6))
    width = 0.8 / len(ops)
    for k, op in enumerate(ops):
        xs = [r["edge"] + (k - (len(ops) - 1) / 2) * width for r in records]
        drops = [100 * (r["base_acc"] - r["op_acc"][op]) for r in records]
        errs = [100 * (r.get("drop_se") or {}).get(op, 0.0) for r in records]
        bars = ax.bar(xs, drops, width, label=op, yerr=errs if any(errs) else None)
        for bar, r in zip(bars, records):
            if r["chosen"] == op:
                bar.set_hatch("//")
                bar.set_edgecolor("black")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks([r["edge"] for r in records])
    ax.set_xticklabels([f"{r['edge']}\n{r['src']}->{r['dst']}" for r in records], fontsize=8)
    ax.set_ylabel(f"{metric} drop when masked (pp)")
    ax.set_title("perturbation selection (hatched = kept op)")
    ax.legend(fontsize=8, ncol=len(ops))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(
    rows: list[dict[str, Any]], path: Path, keys: Sequence[str], metric: str = "acc"
) -> None:
    """Loss and accuracy curves per epoch for the given ``<name>_loss``/``<name>_acc`` keys
    (``metric="miou"``: ``<name>_miou``, mIoU)."""
    plt = plt_module()
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(9, 3.2))
    rows = [r for r in rows if r.get("epoch", 0) > 0]
    epochs = [r["epoch"] for r in rows]
    for key in keys:
        if rows and f"{key}_loss" in rows[0]:
            ax_l.plot(epochs, [r[f"{key}_loss"] for r in rows], marker=".", label=key)
        points = [(r["epoch"], r[f"{key}_{metric}"]) for r in rows if f"{key}_{metric}" in r]
        if points:
            ax_a.plot(*zip(*points), marker=".", label=key)
    for ax, name in ((ax_l, "loss"), (ax_a, "accuracy" if metric == "acc" else "mIoU")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_video(images: Any, video: Any, path: Path, steps: Sequence[int]) -> None:
    """One row per image: the image, then its T frames. ``images`` (N, C, H, W) and ``video``
    (N, T, C, H, W), pixel values in [0, 1] (clipped for display); ``steps`` label the frames."""
    plt = plt_module()
    n, t = video.shape[:2]
    fig, axes = plt.subplots(n, t + 1, figsize=(1.3 * (t + 1), 1.3 * n), squeeze=False)
    for r in range(n):
        panels = [images[r]] + [video[r, k] for k in range(t)]
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            img = panel.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("image" if c == 0 else f"s={steps[c - 1]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- search


def write_search_report(searcher: Searcher, result: dict[str, Any]) -> None:
    """A finished search's outputs in its ``out``: genotype.json, selection.json, the plots
    (tau, curves, selection, the genotype's video) and report.md."""
    out, cfg = searcher.out, searcher.cfg
    assert cfg.search is not None and cfg.cell is not None
    genotype: Genotype = result["genotype"]
    genotype.save(out / "genotype.json")
    atomic_write_text(json.dumps(result["records"], indent=1) + "\n", out / "selection.json")
    plot_tau(searcher.log, searcher.cell.edges, out / "tau.png")
    plot_curves(searcher.log, out / "curves.png", ("train", "arch", "val"))
    if result["records"]:
        plot_selection(result["records"], out / "selection.png")
    images = searcher.bundle.val.x[:4].float() / 255
    aspect = images.shape[-1] / images.shape[-2]
    video = genotype_video(genotype, images, searcher.bundle.mean, searcher.bundle.std, aspect)
    steps = [int(s) for s in frame_steps(genotype.frames, genotype.mode)]
    plot_video(images, video, out / "video.png", steps)
    rows = [r for r in searcher.log if r["epoch"] > 0]
    steps = [r["sec_per_step"] for r in rows]
    lines = [
        "# DAS search report",
        "",
        f"- data: {searcher.bundle.describe()} (weights half {len(searcher.w_loader.data)}, "
        f"arch half {len(searcher.a_loader.data)})",
        f"- model: {cfg.model.arch} fusion={cfg.model.fusion} frames={cfg.model.frames} "
        f"nodes={cfg.cell.nodes} ops={list(searcher.cell.ops)}",
        f"- search: {cfg.search.epochs} epochs x {searcher.steps_per_epoch} steps, "
        f"order {cfg.search.order}, "
        f"batch {cfg.search.batch_size} x {searcher.env.world} process(es), device {searcher.dev}, "
        f"ops backend {cfg.runtime.ops_backend}" + (" (amp)" if cfg.runtime.amp else ""),
        f"- das_kernels backend on {searcher.dev.type}: "
        f"{backend_name(searcher.dev, cfg.runtime.ops_backend)}",
        f"- time: search {searcher.seconds['search']:.1f} s, "
        f"selection {searcher.seconds['select']:.1f} s; "
        f"mean {sum(steps) / max(len(steps), 1):.4f} s per search step "
        f"(arch {mean_of(rows, 'sec_arch_step'):.4f} + "
        f"weights {mean_of(rows, 'sec_weight_step'):.4f})",
        f"- supernet after selection: val acc {result['final_val_acc']:.4f} "
        f"({len(searcher.eval_loader.data)} images of the arch half)",
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
        "What the genotype's cell makes of four validation images (pixel units):",
        "",
        "![video](video.png)",
        "",
        "## Per-epoch log",
        "",
        markdown_table(
            ["epoch", "train loss", "train acc", "arch loss", "arch acc", "val acc", "s/step"],
            [
                [
                    r["epoch"],
                    r["train_loss"],
                    r["train_acc"],
                    r["arch_loss"],
                    r["arch_acc"],
                    r.get("val_acc", float("nan")),
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
        n_select = len(searcher.select_loader.data)
        lines += [
            "## Perturbation selection",
            "",
            f"Accuracy drop ± standard error ({n_select} images of the arch half, "
            "`--select-images`) when each op of an edge is masked; the SE is that of the "
            "per-image paired differences (base and masked supernet on the same images). The op "
            "whose removal hurts most is kept (ties within 1e-9: the larger loss increase, then "
            "the larger weight). margin = its drop minus the runner-up's, ± the SE of their "
            "per-image difference; **within noise** = margin below 2 SE (or zero). Edges in "
            "selection order.",
            "",
            selection_table(result["records"], list(searcher.cell.ops)),
            "",
            "![selection](selection.png)",
            "",
        ]
    atomic_write_text("\n".join(lines), out / "report.md")


def _with_se(value: float, se: float | None) -> str:
    return f"{value:.4f}" if se is None else f"{value:+.4f} ± {se:.4f}"


def selection_table(records: list[dict[str, Any]], ops: Sequence[str], score: str = "acc") -> str:
    """Markdown table of selection records: base score, each op's drop (± SE where
    measured), the kept op, its margin over the runner-up (± SE) and whether that is within
    noise."""
    noisy = sum(bool(r.get("within_noise")) for r in records)
    rows = []
    for r in records:
        se = r.get("drop_se") or {}
        margin = r.get("margin")
        vs = "-" if margin is None else f"{_with_se(margin, r['margin_se'])} vs {r['runner_up']}"
        rows.append(
            [
                r["edge"],
                f"{r['src']}->{r['dst']}",
                r["base_acc"],
                *[_with_se(r["drop"][o], se.get(o)) for o in ops],
                r["chosen"],
                vs,
                {True: "**within noise**", False: "no", None: "-"}[r.get("within_noise")],
            ]
        )
    table = markdown_table(
        ["edge", "from->to", f"base {score}", *[f"drop {o}" for o in ops], "kept", "margin",
         "noise"],
        rows,
    )  # fmt: skip
    if any(r.get("within_noise") is not None for r in records):
        table += f"\n\n{noisy} of {len(records)} decisions within noise."
    return table


def mean_of(rows: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return sum(vals) / max(len(vals), 1)


# ----------------------------------------------------------------------------- ablation


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


def _paired_differences(
    groups: dict[tuple[str, str], list[dict[str, Any]]],
    key: str = "val_acc",
    reference: str = "das",
    sign: float = 1.0,
) -> list[list[str]]:
    """Rows (reference fusion, other variant, other fusion, seeds, sign x (reference - other)
    in val acc (`key`) points, wins of the reference (sign 1) or of the other (sign -1)) over
    the seeds both have."""
    rows = []
    for (variant, fusion), das_runs in groups.items():
        if variant != reference:
            continue
        das_acc = {r["seed"]: 100 * r[key] for r in das_runs}
        for (other, other_fusion), runs in groups.items():
            if other == reference:
                continue
            diffs = [
                sign * (das_acc[r["seed"]] - 100 * r[key]) for r in runs if r["seed"] in das_acc
            ]
            if diffs:
                wins = f"{sum(d > 0 for d in diffs)}/{len(diffs)}"
                rows.append([fusion, other, other_fusion, len(diffs), _pm(diffs), wins])
    return rows


def write_ablation_report(
    results: list[dict[str, Any]], out: Path, cfg: RunConfig, command: str | None = None
) -> None:
    """ablation.json (every run) and ablation.md: one row per (variant, fusion) (or policy),
    val acc mean +- sample sd over seeds, and DAS's (each policy's) differences paired by
    seed; ``command``: the command line that ran it, quoted in ablation.md."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(results, indent=1) + "\n", out / "ablation.json")
    groups = _groups(results)
    seg = cfg.segmentation
    metric, name = ("miou", "mIoU") if seg else ("acc", "acc")
    rows = []
    for (variant, fusion), runs in groups.items():
        accs = [100 * r[f"val_{metric}"] for r in runs]
        train_accs = [
            100 * r[f"train_{metric}"] for r in runs if r.get(f"train_{metric}") is not None
        ]
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
                _pm([100 * r[f"best_val_{metric}"] for r in runs]),
                _pm(train_accs) if train_accs else "-",
                _mean_sd([r["sec_per_step"] for r in runs])[0],
                sum(r["train_seconds"] for r in runs),
            ]
        )
    t = cfg.train
    assert t is not None
    budget = f"{t.epochs} epochs" + (f", at most {t.max_steps} steps" if t.max_steps else "")
    header = ["policy" if t.policies is not None else "variant", "fusion", "T", "params"]
    header += ["steps", "seeds", f"val {name} %"]
    header += ["per seed", f"best val {name} %", f"last train {name} %", "s/step"]
    header += ["train s (all seeds)"]
    lines = [
        "# Image-to-image policies" if t.policies is not None else "# DAS ablation",
        "",
        f"- data: {results[0]['data'] if results else cfg.data.data}",
        f"- arch: {cfg.model.arch} (width x{cfg.model.width_mult}), budget: {budget}, "
        f"batch {t.batch_size}",
        f"- genotype: {t.genotype}" if t.policies is None else f"- policies: {t.policies}",
        *([f"- command: `{command}`"] if command else []),
        "",
        markdown_table(header, rows),
        "",
        (
            "val mIoU: final validation mIoU (one confusion matrix over the whole val split, "
            "ignore pixels excluded, classes absent from truth and prediction left out), mean "
            "± sample sd over the seeds; last train mIoU: over the last epoch's augmented "
            "crops."
            if seg
            else "val acc: final validation accuracy, mean ± sample sd over the seeds; last "
            "train acc: training accuracy over the last epoch, on augmented inputs (above val "
            "acc: the networks overfit; below: they still underfit)."
        ),
    ]
    policies = t.policies is not None
    if policies:
        paired = [
            [row[1], *row[3:]]  # 2D runs: no fusion columns
            for row in _paired_differences(groups, f"val_{metric}", "flipcrop", -1.0)
        ]
        heading = f"Each policy minus flipcrop, paired by seed (val {name} points; > 0: the "
        heading += "policy is better):"
        columns = ["policy", "seeds", "difference", "policy wins"]
    else:
        paired = _paired_differences(groups, f"val_{metric}")
        heading = f"DAS minus each variant, paired by seed (val {name} points; > 0: DAS is "
        heading += "better):"
        columns = ["das fusion", "variant", "fusion", "seeds", "difference", "DAS wins"]
    if paired:
        lines += ["", heading, "", markdown_table(columns, paired)]
    if policies:
        lines += [
            "",
            "Policies (das.policy): each trains the 2D baseline network with its images "
            "augmented on top of flip/crop; flipcrop adds nothing; randaugment, "
            "trivialaugment and autoaugment are kornia's; dra is a policy.json from das.search "
            "--method dra; das is one frame of a DAS genotype's video per image (image-to-"
            "image DAS).",
            "",
        ]
        atomic_write_text("\n".join(lines), out / "ablation.md")
        return
    lines += [
        "",
        "Variants: baseline = 2D network on the image; augment = DAS transforms as 2D random "
        "augmentation (one random frame); replica = T identical frames + fusion; das = the "
        "genotype's video + fusion; shuffle = DAS frames in random order + fusion."
        + (
            " Segmentation: das un-warps every frame's logits onto the image before averaging; "
            "das-nounwarp averages them without un-warping; augment un-warps its one frame; "
            "shuffle puts the predictions back in frame order before un-warping."
            if seg
            else ""
        ),
        "",
    ]
    atomic_write_text("\n".join(lines), out / "ablation.md")
