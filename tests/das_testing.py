"""What the das tests share: where ``../shared/data`` is, the fastest temporal module,
the CLI arguments of a tiny run (seconds on one thread), and a saved-tensor meter."""

import os
from collections.abc import Callable
from pathlib import Path

import torch

_DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED = Path(os.environ.get("DAS_SHARED_DATA", _DEFAULT_SHARED))
NO_CIFAR = not (SHARED / "cifar10_small.npz").is_file()
FAST_FUSION = "tsm"
TINY_DATA = [
    *("--limit-train", "48", "--limit-val", "16", "--image-size", "12", "--batch-size", "8"),
    *("--no-progress", "--threads", "1"),
]


def saved_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the tensors autograd saves for backward while `fn()` runs."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total
