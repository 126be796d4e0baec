"""The command line of ``das.search``, ``das.train`` and ``das.evaluate``: every option, its
default and help, in one place. :func:`parse_config` parses and validates a command line
into its typed configuration (:mod:`das.config`); bad input exits with status 2 and a
message naming the option (argparse's own errors and :class:`das.config.ConfigError`).
:func:`run_cli` also turns errors found while running (unreadable data, a checkpoint that
cannot be resumed) into that exit.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from das.cell import SEARCH_SPACES
from das.config import ConfigError, EvalConfig, RunConfig, check, check_eval
from das.data import FORMATS, DataError
from das.models import ARCHS, FUSIONS
from das.models.memory import MEMORY_MODES
from das.models.segmentation import HEADS, OUTPUT_STRIDES
from das.runtime import DistributedFailure, WriteFailure
from das.unwarp import AVERAGES
from das.variants import DEFAULT_ABLATION, SEG_VARIANTS, VARIANTS

__all__ = [
    "HelpFormatter",
    "build_parser",
    "is_main_process",
    "parse_config",
    "parse_eval_config",
    "run_cli",
]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: X)`` unless the help already talks about its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return text + " (default: %(default)s)"


def _typed(cast: Callable, test: Callable, what: str) -> Callable[[str], object]:
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


positive_int = _typed(int, lambda v: v > 0, "a positive integer")
nonneg_int = _typed(int, lambda v: v >= 0, "a non-negative integer")
positive_float = _typed(
    float, lambda v: v > 0 and v == v and v != float("inf"), "a positive number"
)
nonneg_float = _typed(
    float, lambda v: v >= 0 and v == v and v != float("inf"), "a non-negative number"
)
fraction = _typed(float, lambda v: 0 < v < 1, "a number in (0, 1)")


def crop_size(text: str) -> str | None:
    """``--crop H,W`` (or one number for a square): normalised to ``"H,W"``; ``full``: None
    (the size of the data's first training image)."""
    if text.strip().lower() == "full":
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 1:
        parts = parts * 2
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        h = w = 0
    if len(parts) != 2 or h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected H,W (two positive integers), got {text!r}")
    return f"{h},{w}"


# options whose default depends on --task (their parsers' default is None)
TASK_DEFAULTS: dict[str, dict[str, object]] = {
    "classification": {
        "batch_size": 64,
        "eval_images": 256,
        "steps_per_epoch": None,
        "variants": ",".join(DEFAULT_ABLATION),
    },
    "segmentation": {
        "batch_size": 8,
        "eval_images": 12,
        "steps_per_epoch": 10,
        "variants": ",".join(SEG_VARIANTS),
    },
}


def add_task_args(p: argparse.ArgumentParser) -> None:
    """``--task`` and the segmentation options (stored in ``cfg.task``)."""
    g = p.add_argument_group("task")
    g.add_argument(
        "--task",
        choices=("classification", "segmentation"),
        default="classification",
        help="classification (default; --data as above) or segmentation (--data: a CamVid, "
        "Pascal VOC or Cityscapes folder; a dilated ResNet + PSP/DeepLabv3 head, per-frame "
        "logits un-warped onto the image, mIoU)",
    )
    g.add_argument(
        "--head", choices=HEADS, default="psp", help="segmentation head (segmentation only)"
    )
    g.add_argument(
        "--output-stride",
        type=int,
        choices=OUTPUT_STRIDES,
        default=8,
        help="backbone output stride, dilated (segmentation only)",
    )
    g.add_argument(
        "--crop",
        type=crop_size,
        default="96,128",
        help="training crop H,W after random scaling 0.5-2x and flipping, or 'full' (the "
        "data's image size); segmentation only; evaluation sees whole images (default 96,128: "
        "CamVid's 180x240 images at 2-core CPU speed)",
    )
    g.add_argument(
        "--unwarp-average",
        choices=AVERAGES,
        default="logits",
        help="what the un-warp averages over frames: logits or softmax probs (segmentation)",
    )
    g.add_argument(
        "--aux-weight",
        type=nonneg_float,
        default=0.4,
        help="weight of the auxiliary (layer3) head's loss (segmentation only)",
    )


# --method dra: search options whose default differs from DAS's (used when not given)
METHOD_DEFAULTS: dict[str, dict[str, object]] = {
    "dra": {"epochs": 20, "w_lr": 0.05},
}


def add_dra_args(p: argparse.ArgumentParser) -> None:
    """``--method`` and the Differentiable RandAugment options (stored in ``cfg.dra``)."""
    g = p.add_argument_group(
        "method",
        "--method dra searches a Differentiable RandAugment policy (das.dra_search) on a "
        "plain 2D network instead of the DAS cell; there --epochs defaults to "
        f"{METHOD_DEFAULTS['dra']['epochs']} and --w-lr to {METHOD_DEFAULTS['dra']['w_lr']}, "
        "the cell, selection and --frames/--fusion options are unused",
    )
    g.add_argument(
        "--method",
        choices=("das", "dra"),
        default="das",
        help="das: the image->video cell (default); dra: Differentiable RandAugment",
    )
    g.add_argument(
        "--dra-layers", type=positive_int, default=2, help="DRA: policy layers D (ops in a row)"
    )
    g.add_argument(
        "--dra-space",
        choices=("cifar", "imagenet"),
        default="cifar",
        help="DRA: operator ranges (Table I, Fast-AutoAugment's CIFAR or ImageNet ones)",
    )
    g.add_argument(
        "--dra-temperature",
        type=positive_float,
        default=0.5,
        help="DRA: Gumbel-softmax temperature of the op selection",
    )
    g.add_argument(
        "--dra-kl-weight",
        type=nonneg_float,
        default=1.0,
        help="DRA: lambda of KL(p(original) || p(augmented)) in the policy loss",
    )
    g.add_argument(
        "--dra-lr",
        type=positive_float,
        default=5e-3,
        help="DRA: AdamW learning rate of the policy (betas --a-beta1/--a-beta2, weight "
        "decay --a-wd)",
    )
    g.add_argument(
        "--proxy-images",
        type=positive_int,
        default=4000,
        help="DRA: training images searched on (seeded subset), half for the network's "
        "weights, half for the policy",
    )
    g.add_argument(
        "--dra-ops",
        default="all",
        help="DRA: the operators, a group (all = the 16 of Table I, affine, colour) or a "
        "comma list of names (das.dra_ops.DRA_OPS)",
    )


def method_defaults(command: str, args: argparse.Namespace, argv: list[str] | None) -> None:
    """Set the METHOD_DEFAULTS of ``args.method`` for the options `argv` does not give."""
    defaults = METHOD_DEFAULTS.get(getattr(args, "method", ""), {})
    if not defaults:
        return
    quiet = build_parser(command)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    given = vars(quiet.parse_args(argv))
    for name, value in defaults.items():
        if name not in given:
            setattr(args, name, value)


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default="digits",
        help="'digits' (scikit-learn's bundled 8x8 digits, no download; default) or a path: a "
        "CIFAR-10/100 python directory, an MNIST IDX directory, an .npz (x_train, y_train, "
        "x_val, y_val) or an image folder (train/<class>/*.png, val/<class>/*.png)",
    )
    g.add_argument(
        "--data-format",
        choices=FORMATS,
        default="auto",
        help="format of --data (default: detected from the path)",
    )
    g.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help="resize images to this square size (default: 16 for digits, else native)",
    )
    g.add_argument(
        "--val-fraction",
        type=fraction,
        default=0.2,
        help="held-out fraction when the source has no val/test split (default 0.2)",
    )
    g.add_argument(
        "--limit-train",
        type=positive_int,
        default=None,
        help="use only the first N training images (quick runs)",
    )
    g.add_argument(
        "--limit-val",
        type=positive_int,
        default=None,
        help="use only the first N validation images (quick runs)",
    )
    g.add_argument(
        "--crop-pad",
        type=nonneg_int,
        default=None,
        help="random-crop padding in pixels (default: image size / 8)",
    )
    g.add_argument(
        "--flip",
        choices=("auto", "on", "off"),
        default="auto",
        help="random horizontal flips (auto: on for natural images, off for digits/MNIST)",
    )
    g.add_argument(
        "--cutout",
        type=nonneg_int,
        default=0,
        help="cutout square side in pixels, 0 = off (default 0)",
    )


def add_model_args(
    p: argparse.ArgumentParser,
    frames_default: int | None = 4,
    frames_help: str = "T, frames of the video made from each image (default 4)",
) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--arch",
        choices=tuple(ARCHS),
        default="resnet_tiny",
        help="backbone (default resnet_tiny: BasicBlock [1,1,1,1], widths 16-128)",
    )
    g.add_argument(
        "--width-mult",
        type=positive_float,
        default=1.0,
        help="multiply the backbone widths (default 1.0)",
    )
    g.add_argument(
        "--fusion",
        choices=FUSIONS,
        default="gsf",
        help="temporal module in every block (default gsf)",
    )
    g.add_argument(
        "--gsf-ratio",
        type=_typed(int, lambda v: 0 < v <= 100, "an integer in 1..100"),
        default=25,
        help="GSF channel ratio in percent (default 25)",
    )
    g.add_argument(
        "--frames",
        type=positive_int,
        default=frames_default,
        help=frames_help,
    )
    g.add_argument(
        "--step-mode",
        choices=("centered", "forward"),
        default="centered",
        help="frame steps: centered (s_t = t - T//2, the middle frame is the image; "
        "default) or forward (s_t = t + 1, the paper's Eq. 7)",
    )


def add_runtime_args(p: argparse.ArgumentParser, out_default: str, resume_help: str) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--out", default=out_default, help=f"output directory (default {out_default})")
    g.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0)")
    g.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto = cuda when available, else cpu (default auto)",
    )
    g.add_argument(
        "--amp", action="store_true", help="bfloat16 autocast for the backbone (CUDA only)"
    )
    g.add_argument(
        "--ops-backend",
        choices=("fused", "reference"),
        default="fused",
        help="das_kernels ops: fused (fastest available backend; default) or "
        "reference (pure PyTorch, for speed comparisons)",
    )
    g.add_argument(
        "--memory",
        choices=MEMORY_MODES,
        default="normal",
        help="lean: backbone blocks recomputed in the backward and evaluation in chunks of "
        "--batch-size images (the same numbers, a fraction of the activation memory, about "
        "a third more compute per training step; default normal)",
    )
    g.add_argument(
        "--workers",
        type=nonneg_int,
        default=0,
        help="DataLoader worker processes that read (decode) the batches; the batches are "
        "the same with or without them (default 0: read in this process)",
    )
    g.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: torch's choice)",
    )
    g.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms (cuDNN, cuBLAS, das_kernels backward): CUDA runs repeat "
        "bit for bit and --resume equals an uninterrupted run; slower (CPU: always)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--resume", action="store_true", help=resume_help)


def _search_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m das.search",
        description="Differentiable Augmentation Search: learn the image->video cell (bi-level "
        "DARTS), then pick one op per edge by perturbation. Defaults search on the bundled "
        "digits in a few minutes on 2 CPU cores.",
        formatter_class=HelpFormatter,
    )
    add_data_args(p)
    add_model_args(p)
    add_task_args(p)
    add_dra_args(p)
    g = p.add_argument_group("cell")
    g.add_argument(
        "--nodes",
        type=positive_int,
        default=4,
        help="intermediate nodes of the cell (edges = nodes*(nodes+1)/2)",
    )
    g.add_argument(
        "--ops",
        default="affine5",
        help=f"search space ({', '.join(SEARCH_SPACES)}) or a comma list of ops (affine or colour)",
    )
    g.add_argument(
        "--learn-magnitudes",
        action="store_true",
        help="also learn each op's magnitude per edge (with tau)",
    )
    g.add_argument(
        "--magnitudes",
        choices=("fixed", "gaussian"),
        default="fixed",
        help="gaussian: each edge-op magnitude is N(mu, sigma^2), drawn per sample in "
        "training (DRA's magnitude distributions in the video setting); mu and sigma are "
        "learned with tau (implies --learn-magnitudes); the genotype stores mu and sigma",
    )
    g = p.add_argument_group("search")
    g.add_argument("--epochs", type=positive_int, default=8, help="search epochs")
    g.add_argument(
        "--steps-per-epoch",
        type=positive_int,
        default=None,
        help="steps per epoch (default: one pass over the weight half; segmentation: 10)",
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="batch size per process (default: 64; segmentation: 8 crops)",
    )
    g.add_argument(
        "--order",
        type=int,
        choices=(1, 2),
        default=1,
        help="DARTS approximation: 1 = first order, 2 = unrolled (finite differences)",
    )
    g.add_argument(
        "--warmup-epochs",
        type=nonneg_int,
        default=0,
        help="epochs of weight-only training before arch updates start",
    )
    g.add_argument("--w-lr", type=positive_float, default=0.025, help="SGD learning rate (cosine)")
    g.add_argument("--w-lr-min", type=nonneg_float, default=0.001, help="final SGD learning rate")
    g.add_argument("--w-momentum", type=nonneg_float, default=0.9, help="SGD momentum")
    g.add_argument("--w-wd", type=nonneg_float, default=3e-4, help="SGD weight decay")
    g.add_argument(
        "--grad-clip", type=nonneg_float, default=5.0, help="weight grad-norm clip (0 = off)"
    )
    g.add_argument(
        "--a-lr",
        type=positive_float,
        default=3e-3,
        help="Adam learning rate (arch) (default 3e-3: moves the softmax weights visibly in "
        "the 8 x 11 search steps on the digits, where DARTS' 3e-4 keeps them within 0.007 of "
        "uniform; das/README.md)",
    )
    g.add_argument("--a-beta1", type=nonneg_float, default=0.5, help="Adam beta1 (arch)")
    g.add_argument("--a-beta2", type=nonneg_float, default=0.999, help="Adam beta2 (arch)")
    g.add_argument("--a-wd", type=nonneg_float, default=1e-3, help="Adam weight decay (arch)")
    g.add_argument(
        "--eval-every",
        type=nonneg_int,
        default=1,
        help="evaluate the supernet on the arch half every N epochs (0 = only at the end)",
    )
    g.add_argument(
        "--eval-images",
        type=nonneg_int,
        default=None,
        help="images of the arch half (a fixed seeded subset) for the per-epoch supernet "
        "accuracy (segmentation: mIoU, whole images, also used by selection); 0 = all "
        "(default: 256; segmentation: 12)",
    )
    g = p.add_argument_group("selection")
    g.add_argument(
        "--select",
        choices=("perturbation", "argmax"),
        default="perturbation",
        help="how to discretise: perturbation (DARTS-PT) or argmax of tau",
    )
    g.add_argument(
        "--select-images",
        type=nonneg_int,
        default=0,
        help="images of the arch half (a fixed seeded subset) perturbation selection scores "
        "every masked op on, with paired standard errors; 0 = all of the arch half; at most "
        "10000 (classification; segmentation selects on --eval-images) (default 0)",
    )
    g.add_argument(
        "--seeds",
        default=None,
        help="comma list of seeds (0,1,2): one complete search per seed in OUT/seed-S, then "
        "the consensus genotype in OUT/genotype.json, OUT/consensus.json and OUT/report.md "
        "(default: one search with --seed)",
    )
    g.add_argument(
        "--select-order",
        choices=("random", "sequential"),
        default="random",
        help="order in which edges are discretised",
    )
    g.add_argument(
        "--finetune-epochs",
        type=nonneg_float,
        default=0.0,
        help="epochs of weight fine-tuning after each selected edge",
    )
    g.add_argument(
        "--finetune-lr",
        type=positive_float,
        default=0.01,
        help="SGD learning rate while fine-tuning",
    )
    p.add_argument(
        "--rf",
        action="store_true",
        help="after the search, the effective receptive field of the searched backbone fed "
        "by each single-op genotype and by the genotype (Fig. 1b): OUT/rf/ and a report "
        "section (classification)",
    )
    add_runtime_args(
        p,
        "runs/search",
        "continue from OUT/checkpoint.pt with its configuration (same result "
        "as an uninterrupted run)",
    )
    return p


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m das.train",
        description="Train a network from scratch with a DAS genotype (or an ablation variant); "
        "--ablation trains all variants and writes a comparison table.",
        formatter_class=HelpFormatter,
    )
    add_data_args(p)
    add_model_args(p, None, "T for the replica variant (default: the genotype's T, else 4)")
    add_task_args(p)
    g = p.add_argument_group("variant")
    g.add_argument(
        "--genotype",
        default=None,
        help="genotype.json from das.search, or 'random' (a seeded random genotype); "
        "needed by the das, augment and shuffle variants",
    )
    g.add_argument(
        "--variant",
        choices=SEG_VARIANTS,
        default=None,
        help="what to train (das-nounwarp: segmentation only; default das, or baseline with "
        "--policy)",
    )
    g.add_argument(
        "--ablation",
        action="store_true",
        help="train every variant of --variants and write ablation.md/json",
    )
    g.add_argument(
        "--variants",
        default=None,
        help=f"comma list of variants for --ablation, from {', '.join(VARIANTS)} (default: "
        f"{','.join(DEFAULT_ABLATION)}; with --task segmentation from {', '.join(SEG_VARIANTS)}, "
        "default all of those)",
    )
    g.add_argument(
        "--fusions",
        default=None,
        help="comma list of fusions for the video variants in --ablation (default: --fusion)",
    )
    g = p.add_argument_group("image-to-image policy (das.policy)")
    g.add_argument(
        "--policy",
        default=None,
        help="train the 2D baseline network with each training image augmented by a policy, "
        "on top of flip/crop: flipcrop (nothing more), randaugment:N,M (1<=N<=15, 0<M<30), "
        "trivialaugment, "
        "autoaugment:cifar10|imagenet|svhn (kornia's), dra:policy.json (das.search --method "
        "dra) or das:genotype.json (one frame of the genotype's video per image)",
    )
    g.add_argument(
        "--policies",
        default=None,
        help="with --ablation: train one run per policy (x --seeds) instead of the variants, "
        "e.g. flipcrop,randaugment:2,9,trivialaugment,autoaugment:cifar10 (a bare number "
        "belongs to the policy before it); the table compares each with flipcrop",
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
        type=positive_int,
        default=1,
        help="--ablation runs trained at once, each in its own process (e.g. several small "
        "runs sharing one GPU; CPU threads are split between them unless --threads is given)",
    )
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=positive_int, default=15, help="training epochs")
    g.add_argument(
        "--max-steps",
        type=positive_int,
        default=None,
        help="stop after this many optimiser steps (budget; the cosine schedule "
        "spans min(epochs x steps/epoch, max-steps))",
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="batch size per process (default: 64; segmentation: 8 crops)",
    )
    g.add_argument("--lr", type=positive_float, default=0.05, help="SGD learning rate (cosine)")
    g.add_argument("--lr-min", type=nonneg_float, default=0.0, help="final learning rate")
    g.add_argument("--momentum", type=nonneg_float, default=0.9, help="SGD (Nesterov) momentum")
    g.add_argument("--wd", type=nonneg_float, default=5e-4, help="weight decay")
    g.add_argument("--grad-clip", type=nonneg_float, default=5.0, help="grad-norm clip (0 = off)")
    g.add_argument(
        "--eval-every",
        type=nonneg_int,
        default=1,
        help="evaluate on the val split every N epochs (0 = only at the end)",
    )
    add_runtime_args(
        p, "runs/train", "continue from OUT/checkpoint.pt (per variant with --ablation)"
    )
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="only evaluate a trained checkpoint (--checkpoint, default OUT/checkpoint.pt)",
    )
    p.add_argument("--checkpoint", default=None, help="checkpoint for --eval-only")
    p.add_argument(
        "--rf",
        action="store_true",
        help="after training, effective receptive fields (python -m das.rf) of the run, or of "
        "the first seed of every --ablation run against the baseline: OUT/rf/ and a section "
        "of ablation.md (classification)",
    )
    return p


def _evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m das.evaluate",
        description="Evaluate a das.train checkpoint on its validation split (segmentation: "
        "mIoU, pixel accuracy and per-class IoU from one confusion matrix over the split).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint.pt written by das.train")
    p.add_argument("--data", default=None, help="override the dataset path of the checkpoint")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device")
    p.add_argument(
        "--split",
        choices=("val", "test"),
        default="val",
        help="split to evaluate (test: a test split the data holds, e.g. CamVid's test/)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=256,
        help="evaluation batch (segmentation: capped at 8 images)",
    )
    p.add_argument(
        "--ops-backend",
        choices=("fused", "reference"),
        default="fused",
        help="das_kernels ops backend",
    )
    return p


_PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "search": _search_parser,
    "train": _train_parser,
    "evaluate": _evaluate_parser,
}


def build_parser(command: str) -> argparse.ArgumentParser:
    """The argparse parser of ``python -m das.<command>`` (search, train or evaluate)."""
    return _PARSERS[command]()


def parse_config(command: str, argv: list[str] | None = None) -> RunConfig:
    """The validated configuration of ``python -m das.<command> ARGV``, command search or
    train (bad input: exit status 2, the message naming the option)."""
    parser = build_parser(command)
    args = parser.parse_args(argv)
    method_defaults(command, args, argv)
    if command == "train" and args.variant is None:
        args.variant = "baseline" if args.policy else "das"
    seg = args.task == "segmentation"
    for name, value in TASK_DEFAULTS["segmentation" if seg else "classification"].items():
        if getattr(args, name, "") is None:
            setattr(args, name, value)
    try:
        cfg = RunConfig.from_namespace(command, args)
        check(cfg)
    except ConfigError as exc:
        parser.error(str(exc))
    return cfg


def parse_eval_config(argv: list[str] | None = None) -> EvalConfig:
    """The validated configuration of ``python -m das.evaluate ARGV``."""
    parser = build_parser("evaluate")
    cfg = EvalConfig(**vars(parser.parse_args(argv)))
    try:
        check_eval(cfg)
    except ConfigError as exc:
        parser.error(str(exc))
    return cfg


def run_cli(command: str, argv: list[str] | None, run: Callable[..., int]) -> int:
    """``run(config)`` of the parsed command line; DataError (``--data: ...``) and
    ConfigError raised while running exit with status 2 as well; a file that cannot be
    written (WriteFailure) or a failed collective (DistributedFailure) exit with status 1
    and one line; Ctrl-C (KeyboardInterrupt) with 130 and how to resume."""
    cfg = parse_eval_config(argv) if command == "evaluate" else parse_config(command, argv)
    try:
        return run(cfg)
    except DataError as exc:
        build_parser(command).error(f"--data: {exc}")
    except ConfigError as exc:
        build_parser(command).error(str(exc))
    except (WriteFailure, DistributedFailure) as exc:  # a full disk, a dead rank: exit 1
        print(f"{build_parser(command).prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the last complete checkpoint stays; exit 130
        from das.session import interrupted_message

        if is_main_process():
            out = getattr(cfg, "out", None)
            print(interrupted_message(command, out, argv), file=sys.stderr, flush=True)
        return 130
    raise AssertionError("unreachable")  # parser.error exits


def is_main_process() -> bool:
    """Rank 0 of a torchrun run (or a single process): the one that prints."""
    return int(os.environ.get("RANK", "0")) == 0
