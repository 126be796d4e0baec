"""What the das tests share: where ``../shared/data`` is, the fastest temporal module,
and the CLI arguments of a tiny run (seconds on one thread)."""

import os
from pathlib import Path

_DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED = Path(os.environ.get("DAS_SHARED_DATA", _DEFAULT_SHARED))
NO_CIFAR = not (SHARED / "cifar10_small.npz").is_file()
FAST_FUSION = "tsm"
TINY_DATA = [
    *("--limit-train", "48", "--limit-val", "16", "--image-size", "12", "--batch-size", "8"),
    *("--no-progress", "--threads", "1"),
]
