"""Data sources and ``load_data``: a ``DataBundle`` of a train and a val set.

``source`` is ``digits`` or a path, the format detected from it or given explicitly:

* ``digits`` (default, no download): scikit-learn's bundled 8x8 digits (1,797 images),
  upsampled (bilinear) to ``image_size`` (default 16: sub-pixel shifts and rotations make
  sense, and a search takes minutes on 2 CPU cores; 32 costs 4x); a fixed stratified 80/20
  train/val split.
* ``cifar``: a CIFAR-10 (``data_batch_1..5`` + ``test_batch``) or CIFAR-100 (``train`` +
  ``test``) python-pickle directory, e.g. ``cifar-10-batches-py/``.
* ``mnist``: a directory of IDX files, ``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
  ``t10k-labels-idx1-ubyte[.gz]``; with only the t10k pair it is split 80/20.
* ``npz``: a ``.npz`` with ``x_train, y_train, x_val, y_val`` (uint8 ``N x H x W x C`` or
  ``N x H x W``, integer labels), optional ``classes`` (e.g. ``shared/data/cifar10_small.npz``).
* ``folder``: ``root/train/<class>/*.png|jpg`` and ``root/val/<class>/...`` (or ``test``;
  ImageNet's ``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``), or ``root/<class>/...`` split
  80/20. Read lazily (``das.data.sets.FolderSet``); the others are held in memory (uint8).
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from das.data.sets import (
    FOLDER_LAYOUT,
    DataError,
    FolderSet,
    ImageSet,
    pixel_stats,
    scan_folder,
    split_set,
)

FORMATS = ("auto", "digits", "cifar", "mnist", "npz", "folder")
STATS_IMAGES = 1024  # a lazy set with more images takes its mean/std from a seeded sample


@dataclass
class DataBundle:
    name: str
    train: ImageSet | FolderSet
    val: ImageSet | FolderSet
    num_classes: int
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool  # horizontal flips are label-preserving (natural images, not digits)
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return self.train.image_shape[0]

    @property
    def image_size(self) -> int:
        return self.train.image_shape[-1]

    @property
    def aspect(self) -> float:
        """Image width over height."""
        _, h, w = self.train.image_shape
        return w / h

    @property
    def lazy(self) -> bool:
        return self.train.lazy

    def preview(self, n: int = 4) -> Tensor:
        """The first `n` validation images, uint8 (n, C, H, W)."""
        return self.val.gather(torch.arange(min(n, len(self.val))))[0]

    def describe(self) -> str:
        c, h, w = self.train.image_shape
        lazy = ", read from disk per batch" if self.lazy else ""
        return (
            f"{self.name}: {len(self.train)} train / {len(self.val)} val, "
            f"{self.num_classes} classes, {c}x{h}x{w}{lazy}"
        )


# ----------------------------------------------------------------------------- loaders


def _from_hwc(x: np.ndarray, where: str) -> Tensor:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"{where}: expected images N x H x W (x 1|3), got shape {x.shape}")
    if x.shape[0] == 0:
        raise DataError(f"{where}: no images (shape {x.shape})")
    if np.issubdtype(x.dtype, np.floating):
        bad = ~np.isfinite(x).reshape(x.shape[0], -1).all(axis=1)
        if bad.any():
            raise DataError(
                f"{where}: {int(bad.sum())} of {x.shape[0]} images hold NaN or infinite pixels "
                f"(first: image {int(np.argmax(bad))})"
            )
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.floating) and x.size and float(x.max()) <= 1.0:
            x = x * 255.0
        x = np.clip(x, 0, 255).astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()


def _labels(y: np.ndarray, where: str) -> Tensor:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    if y.size and y.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, found {y.min()}")
    return torch.from_numpy(y.astype(np.int64))


def _load_digits() -> tuple[ImageSet, ImageSet | None, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    return (
        ImageSet(x, torch.from_numpy(d.target.astype(np.int64))),
        None,
        [str(i) for i in range(10)],
    )


CIFAR_LAYOUT = (
    "a CIFAR python directory: data_batch_1..data_batch_5 + test_batch (+ batches.meta) for "
    "CIFAR-10, or train + test (+ meta) for CIFAR-100 (pickled dicts with b'data' N x 3072 "
    "uint8 and b'labels' / b'fine_labels')"
)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except Exception as exc:
        raise DataError(
            f"cannot read {path} as a CIFAR pickle ({exc}); expected {CIFAR_LAYOUT}"
        ) from exc
    if not isinstance(d, dict):
        raise DataError(f"{path} is not a pickled dict; expected {CIFAR_LAYOUT}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar_set(paths: list[Path]) -> ImageSet:
    xs, ys = [], []
    for p in paths:
        d = _unpickle(p)
        label_key = next((k for k in ("labels", "fine_labels") if k in d), None)
        if "data" not in d or label_key is None:
            raise DataError(f"{p} lacks 'data' or 'labels'/'fine_labels'; expected {CIFAR_LAYOUT}")
        data = np.asarray(d["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{p}: 'data' must be N x 3072 uint8, got {data.shape}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[label_key]))
    return ImageSet(
        torch.from_numpy(np.concatenate(xs)), _labels(np.concatenate(ys), str(paths[0]))
    )


def _load_cifar(root: Path) -> tuple[ImageSet, ImageSet | None, list[str]]:
    if (root / "data_batch_1").is_file():
        train_files = sorted(root.glob("data_batch_*"))
        test = root / "test_batch"
        meta, key = root / "batches.meta", "label_names"
    elif (root / "train").is_file():
        train_files, test = [root / "train"], root / "test"
        meta, key = root / "meta", "fine_label_names"
    else:
        raise DataError(f"{root} is not a CIFAR directory; expected {CIFAR_LAYOUT}")
    train = _cifar_set(train_files)
    val = _cifar_set([test]) if test.is_file() else None
    classes: list[str] = []
    if meta.is_file():
        names = _unpickle(meta).get(key, [])
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return train, val, classes


MNIST_LAYOUT = (
    "a directory with IDX files train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz] "
    "and/or t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]"
)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc}); expected {MNIST_LAYOUT}") from exc
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(
            f"{path} is not an unsigned-byte IDX file (bad magic); expected {MNIST_LAYOUT}"
        )
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but the file holds {len(raw) - offset} bytes")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


def _idx_pair(root: Path, prefix: str) -> ImageSet | None:
    def find(kind: str) -> Path | None:
        for name in (f"{prefix}-{kind}", f"{prefix}-{kind}.gz"):
            if (root / name).is_file():
                return root / name
        return None

    images, labels = find("images-idx3-ubyte"), find("labels-idx1-ubyte")
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        raise DataError(
            f"{root}: found only one of the {prefix} images/labels pair; expected {MNIST_LAYOUT}"
        )
    x, y = _read_idx(images), _read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"{root}: {prefix} images {x.shape} and labels {y.shape} do not match")
    return ImageSet(torch.from_numpy(x.copy()).unsqueeze(1), _labels(y, str(labels)))


def _load_mnist(root: Path) -> tuple[ImageSet, ImageSet | None, list[str]]:
    train, test = _idx_pair(root, "train"), _idx_pair(root, "t10k")
    if train is None and test is None:
        raise DataError(f"{root} holds no MNIST IDX files; expected {MNIST_LAYOUT}")
    classes = [str(i) for i in range(10)]
    if train is None:
        return test, None, classes  # type: ignore[return-value]
    return train, test, classes


NPZ_LAYOUT = "an .npz with x_train, y_train, x_val, y_val (uint8 N x H x W [x C], int labels)"


def _load_npz(path: Path) -> tuple[ImageSet, ImageSet | None, list[str]]:
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"cannot read {path} as .npz ({exc}); expected {NPZ_LAYOUT}") from exc
    with z:
        missing = [k for k in ("x_train", "y_train") if k not in z.files]
        if missing:
            raise DataError(f"{path} lacks {missing} (has {z.files}); expected {NPZ_LAYOUT}")
        train = ImageSet(
            _from_hwc(z["x_train"], f"{path}:x_train"), _labels(z["y_train"], f"{path}:y_train")
        )
        val = None
        if "x_val" in z.files and "y_val" in z.files:
            val = ImageSet(
                _from_hwc(z["x_val"], f"{path}:x_val"), _labels(z["y_val"], f"{path}:y_val")
            )
        classes = [str(c) for c in z["classes"]] if "classes" in z.files else []
    return train, val, classes


def _load_folder(root: Path, size: int | None) -> tuple[FolderSet, FolderSet | None, list[str]]:
    train_dir = root / "train"
    val_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    base = train_dir if train_dir.is_dir() else root
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{base} has no class sub-directories; expected {FOLDER_LAYOUT}")
    hw = None if size is None else (size, size)
    train = scan_folder(base, classes, hw, size is not None, "training")
    val = None
    if base is train_dir and val_dir:
        val = scan_folder(val_dir, classes, train.size, True, "validation")
    return train, val, classes


def detect_format(source: str) -> str:
    """The format of `source` (``digits``, or a path), or a DataError saying what was found."""
    if source == "digits":
        return "digits"
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"data path not found: {path}; pass 'digits' (bundled, no download), a CIFAR python "
            "directory, an MNIST IDX directory, an .npz file or an image folder"
        )
    if path.is_file():
        if path.suffix == ".npz":
            return "npz"
        raise DataError(f"{path} is a file but not an .npz; expected {NPZ_LAYOUT}")
    names = {p.name for p in path.iterdir()}
    if "data_batch_1" in names or {"train", "test", "meta"} <= names and (path / "train").is_file():
        return "cifar"
    if any("idx1-ubyte" in n or "idx3-ubyte" in n for n in names):
        return "mnist"
    if any((path / n).is_dir() for n in names):
        return "folder"
    raise DataError(
        f"cannot tell the format of {path}; expected {CIFAR_LAYOUT}; or {MNIST_LAYOUT}; or "
        f"{FOLDER_LAYOUT}"
    )


def _resize(data: ImageSet, size: int) -> ImageSet:
    if data.x.shape[-2:] == (size, size):
        return data
    x = F.interpolate(
        data.x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return ImageSet(x.round().clamp(0, 255).to(torch.uint8), data.y)


def _check_labels(train, val, classes: list[str], source: str) -> None:
    """Labels must be 0..N-1: below the number of class names, or without gaps."""
    y = torch.cat([train.y, val.y])
    if y.numel() == 0:
        raise DataError(f"{source}: no images")
    top = int(y.max())
    if classes:
        if top >= len(classes):
            raise DataError(f"{source}: {len(classes)} class names but labels go up to {top}")
        return
    present = torch.unique(y)
    if len(present) != top + 1:
        missing = sorted(set(range(top + 1)) - set(present.tolist()))
        raise DataError(
            f"{source}: labels must be 0..N-1, but they are {len(present)} distinct values from "
            f"{int(present[0])} to {top} ({len(missing)} of 0..{top} unused, e.g. {missing[:5]}); "
            "they would make a classifier of "
            f"{top + 1} classes: relabel them 0..{len(present) - 1}, or give class names"
        )


def load_data(
    source: str = "digits",
    fmt: str = "auto",
    image_size: int | None = None,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    limit_train: int | None = None,
    limit_val: int | None = None,
    lazy: bool | None = None,
) -> DataBundle:
    """Load a dataset. ``image_size`` resizes (default: 16 for digits, else native).

    Image folders are lazy by default (``lazy=None``): file names and labels in memory, pixels
    read per item; ``lazy=False`` decodes them into memory up front. The other formats are
    always in memory (``lazy=True`` for them is a DataError).
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(source)
    path = Path(source).expanduser()
    if fmt != "digits" and not path.exists():
        raise DataError(f"data path not found: {path}")
    if lazy and fmt != "folder":
        raise DataError(f"{source}: only image folders are read lazily, {fmt} is held in memory")
    if fmt == "digits":
        train, val, classes = _load_digits()
        image_size = image_size or 16
    elif fmt == "cifar":
        train, val, classes = _load_cifar(path)
    elif fmt == "mnist":
        train, val, classes = _load_mnist(path)
    elif fmt == "npz":
        train, val, classes = _load_npz(path)
    else:
        train, val, classes = _load_folder(path, image_size)
    if val is None:
        train, val = split_set(train, val_fraction, split_seed)
    for name, part in (("training", train), ("validation", val)):
        if len(part) == 0:
            raise DataError(f"{source}: the {name} split has no images")
    _check_labels(train, val, classes, str(source))
    if train.image_shape != val.image_shape:
        raise DataError(f"{source}: train images {train.image_shape} != val {val.image_shape}")
    if image_size is not None and not train.lazy:
        train, val = _resize(train, image_size), _resize(val, image_size)
    # limits take a seeded random subset: files are often sorted by class
    generator = torch.Generator().manual_seed(split_seed)
    if limit_train:
        train = train.subset(torch.randperm(len(train), generator=generator)[:limit_train])
    if limit_val:
        val = val.subset(torch.randperm(len(val), generator=generator)[:limit_val])
    if train.lazy and lazy is False:
        train, val = train.load(), val.load()
    num_classes = int(max(train.y.max(), val.y.max())) + 1
    classes = classes or [str(i) for i in range(num_classes)]
    mean, std = pixel_stats(train, STATS_IMAGES, split_seed)
    flip = fmt not in ("digits", "mnist")
    return DataBundle(fmt, train, val, num_classes, classes, mean, std, flip, str(source))
