"""Image sets as ``torch.utils.data.Dataset``: in memory (uint8 tensors) or lazy (an image
folder's file list and labels; the pixels are read with Pillow per item).

Both give ``set[i] -> (uint8 (C, H, W), label)`` and ``set.gather(indices) -> (uint8
(B, C, H, W), int64 (B,))``; ``set.x`` indexes like a uint8 ``(N, C, H, W)`` tensor (a lazy
set decodes what is indexed), ``set.y`` is the int64 label tensor, ``subset(index)`` keeps
the lazy/in-memory kind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp"}
FOLDER_LAYOUT = (
    "an image folder root/train/<class>/*.png|jpg and root/val/<class>/... (or root/test/...), "
    "e.g. ImageNet's train/<wnid>/*.JPEG + val/<wnid>/*.JPEG, or root/<class>/... (split 80/20)"
)


class DataError(ValueError):
    """Missing or malformed data; the message names the path and the expected layout."""


def _as_index(index, n: int) -> Tensor:
    return torch.arange(n)[index] if not isinstance(index, Tensor) else index


@dataclass
class ImageSet(Dataset):
    """Images held in memory."""

    x: Tensor  # uint8 (N, C, H, W)
    y: Tensor  # int64 (N,)

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise DataError(
                f"images must be uint8 (N, C, H, W), got {self.x.dtype} {tuple(self.x.shape)}"
            )
        if self.y.shape != (self.x.shape[0],):
            raise DataError(f"{self.x.shape[0]} images but labels of shape {tuple(self.y.shape)}")

    lazy = False

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.y[i]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def gather(self, index) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(index, dtype=torch.int64)
        return self.x[index], self.y[index]

    def subset(self, index: Tensor) -> ImageSet:
        return ImageSet(self.x[index], self.y[index])


class LazyImages:
    """``x`` of a lazy set: the shape of a uint8 (N, C, H, W) tensor; indexing decodes."""

    dtype = torch.uint8

    def __init__(self, owner: FolderSet) -> None:
        self._owner = owner

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self._owner), *self._owner.image_shape))

    def __len__(self) -> int:
        return len(self._owner)

    def __getitem__(self, index) -> Tensor:
        idx = _as_index(index, len(self._owner))
        if idx.dim() == 0:
            return self._owner.gather(idx.view(1))[0][0]
        return self._owner.gather(idx)[0]


def read_image(path: str, size: tuple[int, int], resize: bool) -> np.ndarray:
    """An RGB uint8 (H, W, 3) array of the image at `path`, bilinear-resized to `size` (H, W)
    when `resize`; else a different size is a DataError."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size[1], size[0]):
                if not resize:
                    raise DataError(
                        f"{path} is {im.size[0]}x{im.size[1]} but the set's images are "
                        f"{size[1]}x{size[0]} (its first image); pass --image-size to resize them"
                    )
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read image {path} ({exc})") from exc


class FolderSet(Dataset):
    """An image folder split read lazily: the file names (one numpy bytes array, relative to
    `root`) and labels are in memory, pixels are decoded per item (RGB, ``size`` (H, W))."""

    lazy = True

    def __init__(
        self, root: str, files: np.ndarray, y: Tensor, size: tuple[int, int], resize: bool
    ) -> None:
        self.root, self.files, self.y = root, files, y
        self.size, self.resize = (int(size[0]), int(size[1])), resize
        self.x = LazyImages(self)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, *self.size)

    def path(self, i: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.files[i]))

    def read(self, i: int) -> np.ndarray:
        return read_image(self.path(i), self.size, self.resize)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(self.read(int(i))).permute(2, 0, 1).contiguous(), self.y[i]

    def gather(self, index) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(index, dtype=torch.int64)
        arrs = np.stack([self.read(i) for i in index.tolist()])
        x = torch.from_numpy(arrs).permute(0, 3, 1, 2).contiguous()
        return x, self.y[index]

    def subset(self, index: Tensor) -> FolderSet:
        index = torch.as_tensor(index, dtype=torch.int64)
        return FolderSet(
            self.root, self.files[index.numpy()], self.y[index], self.size, self.resize
        )

    def load(self) -> ImageSet:
        """All of it in memory."""
        return ImageSet(*self.gather(torch.arange(len(self))))

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "x"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.x = LazyImages(self)


def _class_dirs(base: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith("."))


def _image_names(d: Path) -> list[str]:
    return sorted(
        e.name
        for e in os.scandir(d)
        if not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS
    )


def scan_folder(
    base: Path, classes: list[str], size: tuple[int, int] | None, resize: bool, split: str
) -> FolderSet:
    """The file list of one split (``base/<class>/*``), labels by position in `classes`.
    With `size` None the first image's size is the set's (read from its header)."""
    present = _class_dirs(base)
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise DataError(
            f"{base}: class folder(s) {unknown[:5]} are not among the training classes "
            f"({len(classes)} folders); expected {FOLDER_LAYOUT}"
        )
    if not present:
        flat = _image_names(base)
        hint = f" ({len(flat)} images lie directly in it; sort them into <class>/ folders)"
        raise DataError(
            f"the {split} split {base} has no class sub-directories"
            f"{hint if flat else ''}; expected {FOLDER_LAYOUT}"
        )
    names, labels = [], []
    for ci, cls in enumerate(classes):
        d = base / cls
        if not d.is_dir():
            continue  # a class absent from this (validation) split
        files = _image_names(d)
        if not files:
            raise DataError(
                f"class folder {d} holds no images ({', '.join(sorted(IMAGE_EXTS))}); "
                "every class folder needs at least one"
            )
        names.extend(f"{cls}/{f}" for f in files)
        labels.extend([ci] * len(files))
    files_arr = np.array([os.fsencode(n) for n in names])
    y = torch.tensor(labels, dtype=torch.int64)
    if size is None:
        from PIL import Image

        first = str(base / names[0])
        try:
            with Image.open(first) as im:
                size = (im.size[1], im.size[0])
        except Exception as exc:
            raise DataError(f"cannot read image {first} ({exc})") from exc
    return FolderSet(str(base), files_arr, y, size, resize)


def split_set(data, val_fraction: float, seed: int):
    """Stratified split with a fixed seed: per class, the first `val_fraction` go to val."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(data), generator=g)
    val_idx, train_idx = [], []
    for c in torch.unique(data.y):
        members = perm[data.y[perm] == c]
        n_val = int(round(len(members) * val_fraction))
        val_idx.append(members[:n_val])
        train_idx.append(members[n_val:])
    return data.subset(torch.cat(train_idx).sort().values), data.subset(
        torch.cat(val_idx).sort().values
    )


def pixel_stats(data, max_images: int, seed: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of pixels in [0, 1]: over the whole set when it is in memory
    or has at most `max_images` images (the same numbers either way), else over a seeded
    sample of `max_images` images (float64 sums in chunks)."""
    if not data.lazy or len(data) <= max_images:
        x = data.x if not data.lazy else data.gather(torch.arange(len(data)))[0]
        xf = x.float() / 255.0
        mean = tuple(xf.mean(dim=(0, 2, 3)).tolist())
        std = tuple(xf.std(dim=(0, 2, 3)).clamp(min=1e-3).tolist())
        return mean, std
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed + 104729))
    pick = pick[:max_images].sort().values
    s = torch.zeros(3, dtype=torch.float64)
    s2 = torch.zeros(3, dtype=torch.float64)
    count = 0
    for chunk in pick.split(64):
        x = data.gather(chunk)[0].double() / 255.0
        s += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / count
    var = ((s2 - count * mean * mean) / max(count - 1, 1)).clamp(min=0)
    std = var.sqrt().clamp(min=1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())
