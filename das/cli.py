"""Argument groups and checks shared by ``das.search``, ``das.train`` and ``das.evaluate``.

Bad input is reported by argparse (exit status 2) with a message naming the option.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import torch

from das.cell import SEARCH_SPACES, resolve_ops
from das.data import FORMATS, DataError, detect_format
from das.models import ARCHS, FUSIONS, fusion_unavailable_reason

__all__ = [
    "HelpFormatter",
    "add_data_args",
    "add_model_args",
    "add_runtime_args",
    "check_common",
    "nonneg_float",
    "nonneg_int",
    "positive_float",
    "positive_int",
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


def add_model_args(p: argparse.ArgumentParser, fusion_default: str = "gsf") -> None:
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
        default=fusion_default,
        help=f"temporal module in every block (default {fusion_default})",
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
        default=4,
        help="T, frames of the video made from each image (default 4)",
    )
    g.add_argument(
        "--step-mode",
        choices=("centered", "forward"),
        default="centered",
        help="frame steps: centered (s_t = t - T//2, the middle frame is the image; "
        "default) or forward (s_t = t + 1, the paper's Eq. 7)",
    )


# options of add_runtime_args that a resumed run takes from its command line, not its checkpoint
RUNTIME_KEYS = ("out", "device", "no_progress", "threads", "ops_backend", "resume")


def add_runtime_args(p: argparse.ArgumentParser, out_default: str) -> None:
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


def check_common(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks that need more than one option or the file system; argparse errors (exit 2)."""
    if getattr(args, "amp", False):
        want = args.device
        if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
            p.error("--amp needs CUDA (bfloat16 autocast); drop --amp or use --device cuda")
    if getattr(args, "device", "auto") == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available on this machine")
    if hasattr(args, "data"):
        try:
            if args.data_format == "auto":
                detect_format(args.data)
            elif args.data_format != "digits" and not os.path.exists(os.path.expanduser(args.data)):
                raise DataError(f"data path not found: {args.data}")
        except DataError as exc:
            p.error(f"--data: {exc}")
    if hasattr(args, "fusion"):
        reason = fusion_unavailable_reason(args.fusion)
        if reason is not None:
            p.error(f"--fusion {args.fusion}: {reason}")
    if hasattr(args, "ops") and args.ops is not None:
        try:
            resolve_ops(args.ops)
        except ValueError as exc:
            p.error(f"--ops: {exc} (search spaces: {', '.join(SEARCH_SPACES)})")
