"""``python -m das.evaluate CHECKPOINT``: validation loss/accuracy of a ``das.train`` checkpoint
(``--task segmentation`` runs: mIoU, pixel accuracy and per-class IoU from one confusion matrix
over the whole split at the masks' resolution; ``--split test`` evaluates a test split).

The network is rebuilt from the checkpoint's configuration (its RunConfig) and genotype;
``--data`` may point at another copy of the same dataset (same classes, channels and image
size). A checkpoint without a readable configuration (an older das, or not das) exits with
status 2 naming the missing or unknown field.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from das import cli, session
from das.cell import Genotype
from das.config import EvalConfig, RunConfig
from das.data import DataError
from das.engine import evaluate
from das.runtime import DistEnv, atomic_write_text, load_checkpoint, ops_backend

__all__ = ["evaluate_checkpoint", "main"]


def evaluate_checkpoint(
    path: str | Path,
    device: str = "auto",
    data: str | None = None,
    env: DistEnv | None = None,
    batch_size: int = 256,
    ops_backend_name: str = "fused",
    split: str = "val",
) -> dict[str, Any]:
    """Evaluate a train checkpoint on its validation split; writes ``eval.json`` beside it
    (``eval_<split>.json`` for another split)."""
    with session.process(device, None, env) as env:
        ckpt = load_checkpoint(path, "train")
        cfg = RunConfig.from_dict(ckpt.get("config"), where=f"{path}: config")
        if cfg.segmentation:
            return _evaluate_segmentation(
                path, ckpt, cfg, env, data, batch_size, ops_backend_name, split
            )
        if split != "val":
            raise DataError(f"--split {split}: classification checkpoints evaluate on val")
        bundle = session.load_bundle(cfg.data, source=data)
        meta = session.DataMeta.from_dict(ckpt["data"])
        got = (bundle.num_classes, bundle.in_channels, bundle.image_size)
        want = (meta.num_classes, meta.in_channels, meta.image_size)
        if got != want:
            raise DataError(
                f"data has (classes, channels, size) {got} but the checkpoint was trained on {want}"
            )
        genotype = Genotype.from_dict(ckpt["genotype"]) if ckpt["genotype"] else None
        aspect = bundle.train.x.shape[-1] / bundle.train.x.shape[-2]
        with ops_backend(ops_backend_name):
            network = session.variant_network(cfg, genotype, meta, aspect, augment=False).to(
                env.device
            )
            network.load_state_dict(ckpt["network"])
            loader = session.eval_loader(bundle.val, batch_size, meta.mean, meta.std, env)
            chunk = session.eval_chunk(cfg)
            ev = evaluate(network, loader.epoch_batches(0), env, cfg.runtime.amp, chunk)
        assert cfg.train is not None
        result = {
            "checkpoint": str(path),
            "variant": cfg.train.variant,
            "epoch": ckpt["epoch"],
            "val_acc": ev["acc"],
            "val_loss": ev["loss"],
            "n": ev["n"],
            "data": bundle.describe(),
        }
        if env.is_main:
            atomic_write_text(json.dumps(result, indent=1) + "\n", Path(path).parent / "eval.json")
        return result


def _evaluate_segmentation(
    path: str | Path,
    ckpt: dict[str, Any],
    cfg: RunConfig,
    env: DistEnv,
    data: str | None,
    batch_size: int,
    ops_backend_name: str,
    split: str,
) -> dict[str, Any]:
    from das import segtask

    bundle = segtask.load_seg_bundle(cfg, source=data, split=split)
    meta = session.DataMeta.from_dict(ckpt["data"])
    if bundle.num_classes != meta.num_classes:
        raise DataError(
            f"data has {bundle.num_classes} classes but the checkpoint was trained on "
            f"{meta.num_classes}"
        )
    genotype = Genotype.from_dict(ckpt["genotype"]) if ckpt["genotype"] else None
    with ops_backend(ops_backend_name):
        network = segtask.seg_variant_network(
            cfg, genotype, meta.num_classes, bundle.aspect, (meta.mean, meta.std)
        ).to(env.device)
        network.load_state_dict(ckpt["network"])
        loader = segtask.SegLoader(
            bundle.val, min(batch_size, segtask.EVAL_BATCH), meta.mean, meta.std, False,
            rank=env.rank, world=env.world, device=env.device,
        )  # fmt: skip
        ev = segtask.seg_evaluate(
            network, loader.epoch_batches(0), env, meta.num_classes, cfg.runtime.amp
        )
    assert cfg.train is not None
    ready = segtask.json_ready(ev)
    result = {
        "checkpoint": str(path),
        "task": "segmentation",
        "variant": cfg.train.variant,
        "epoch": ckpt["epoch"],
        "split": split,
        "miou": ready["miou"],
        "pixel_acc": ev["pixel_acc"],
        "loss": ev["loss"],
        "class_iou": dict(zip(bundle.classes, ready["class_iou"])),
        "absent_classes": [bundle.classes[c] for c in ev["absent"]],
        "pixels": ev["pixels"],
        "images": len(bundle.val),
        "note": "mIoU from one confusion matrix over the whole split at the masks' resolution; "
        "ignore pixels excluded; classes absent from both truth and prediction are left out "
        "of the mean",
        "data": bundle.describe(),
        "summary": segtask.describe_eval(ev, bundle.classes),
    }
    if env.is_main:
        name = "eval.json" if split == "val" else f"eval_{split}.json"
        atomic_write_text(json.dumps(result, indent=1) + "\n", Path(path).parent / name)
    return result


def _main(cfg: EvalConfig) -> int:
    try:
        result = evaluate_checkpoint(
            cfg.checkpoint,
            cfg.device,
            cfg.data,
            batch_size=cfg.batch_size,
            ops_backend_name=cfg.ops_backend,
            split=cfg.split,
        )
    except ValueError as exc:  # not a train checkpoint, unreadable, bad configuration
        cli.build_parser("evaluate").error(str(exc))
    if cli.is_main_process():
        if "summary" in result:
            print(result["summary"])
        print(json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run_cli("evaluate", argv, _main)


if __name__ == "__main__":
    sys.exit(main())
