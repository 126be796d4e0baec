"""Segmentation datasets in their standard layouts, decoded lazily, with joint augmentation.

Layouts (``detect_seg_format(root)``, or named explicitly):

* ``camvid`` (SegNet's CamVid): ``train/``, ``trainannot/``, ``val/``, ``valannot/``,
  optional ``test/``, ``testannot/``; a mask holds class ids 0..10, 11 = void (ignored).
* ``voc`` (Pascal VOC 2012): ``JPEGImages/``, ``SegmentationClass/`` (palette PNGs: the
  palette index is the class, 0..20; 255 = boundary, ignored),
  ``ImageSets/Segmentation/{train,val}.txt``.
* ``cityscapes``: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
  ``gtFine/<split>/<city>/*_gtFine_labelIds.png``, label ids mapped to the 19 training ids
  (every other id ignored).

Masks are returned with ignore id 255 whatever the layout. Items are decoded with Pillow
when read (the dataset holds file names only). ``JointAugment`` (random scale, pad with the
ignore id, random crop, horizontal flip; masks only ever resampled with nearest) draws its
randomness from a generator seeded by ``(seed, epoch, index)``, so a sample is a pure
function of those. Bad data raises ``DataError`` naming the file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from das.data import IMAGE_EXTS, DataError

__all__ = [
    "IGNORE_INDEX",
    "SEG_FORMATS",
    "JointAugment",
    "SegmentationFolder",
    "collate_segmentation",
    "detect_seg_format",
]

IGNORE_INDEX = 255
SEG_FORMATS = ("camvid", "voc", "cityscapes")
CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car",
    "pedestrian", "bicyclist",
)  # fmt: skip
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
INVALID = -1


def _lut(mapping: dict[int, int], valid: range) -> np.ndarray:
    """uint8 mask value -> class id (IGNORE_INDEX for valid unlabelled values, INVALID else)."""
    lut = np.full(256, INVALID, dtype=np.int64)
    lut[list(valid)] = IGNORE_INDEX
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


LUTS = {
    "camvid": _lut({i: i for i in range(11)}, range(12)),  # 11 = void
    "voc": _lut({i: i for i in range(21)}, [255]),  # 255 = boundary
    "cityscapes": _lut(CITYSCAPES_TRAIN_IDS, range(34)),  # label ids 0..33
}
CLASSES = {"camvid": CAMVID_CLASSES, "voc": VOC_CLASSES, "cityscapes": CITYSCAPES_CLASSES}


def detect_seg_format(root: str | Path) -> str:
    """The segmentation layout of `root`, or a DataError saying what was expected."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"segmentation data directory not found: {root}")
    if (root / "train").is_dir() and (root / "trainannot").is_dir():
        return "camvid"
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        return "voc"
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return "cityscapes"
    raise DataError(
        f"{root} is not a segmentation layout: expected train/ + trainannot/ (CamVid), "
        "JPEGImages/ + SegmentationClass/ (Pascal VOC) or leftImg8bit/ + gtFine/ (Cityscapes)"
    )


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)


def _camvid_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    images, masks = root / split, root / f"{split}annot"
    if not images.is_dir():
        raise DataError(f"CamVid split {split!r} not found: no {images}")
    pairs = []
    for image in _files(images):
        mask = masks / f"{image.stem}.png"
        if not mask.is_file():
            raise DataError(f"no mask for {image}: expected {mask}")
        pairs.append((image, mask))
    return pairs


def _voc_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise DataError(f"Pascal VOC split {split!r} not found: no {listing}")
    pairs = []
    for name in listing.read_text().split():
        image, mask = (
            root / "JPEGImages" / f"{name}.jpg",
            root / "SegmentationClass" / f"{name}.png",
        )
        for path in (image, mask):
            if not path.is_file():
                raise DataError(f"{listing} names {name!r} but {path} is missing")
        pairs.append((image, mask))
    return pairs


def _cityscapes_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    images = root / "leftImg8bit" / split
    if not images.is_dir():
        raise DataError(f"Cityscapes split {split!r} not found: no {images}")
    pairs = []
    for image in sorted(images.glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        mask = root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"
        if not mask.is_file():
            raise DataError(f"no mask for {image}: expected {mask}")
        pairs.append((image, mask))
    return pairs


PAIRS = {"camvid": _camvid_pairs, "voc": _voc_pairs, "cityscapes": _cityscapes_pairs}


@dataclass(frozen=True)
class JointAugment:
    """Random scale in ``scale``, pad to ``crop`` (image 0, mask ignore), random crop of
    ``crop = (h, w)``, horizontal flip with probability 1/2; the same geometry for both."""

    crop: tuple[int, int]
    scale: tuple[float, float] = (0.5, 2.0)
    flip: bool = True

    def __call__(self, image: Tensor, mask: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        lo, hi = self.scale
        s = lo + (hi - lo) * float(torch.rand((), generator=g))
        H, W = image.shape[-2:]
        size = (max(1, round(H * s)), max(1, round(W * s)))
        image = F.interpolate(image[None], size, mode="bilinear", align_corners=False)[0]
        mask = F.interpolate(mask[None, None].float(), size, mode="nearest")[0, 0].long()
        ch, cw = self.crop
        pad_h, pad_w = max(ch - size[0], 0), max(cw - size[1], 0)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h))
            mask = F.pad(mask, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        top = int(torch.randint(0, image.shape[1] - ch + 1, (), generator=g))
        left = int(torch.randint(0, image.shape[2] - cw + 1, (), generator=g))
        image, mask = (
            image[:, top : top + ch, left : left + cw],
            mask[top : top + ch, left : left + cw],
        )
        if self.flip and bool(torch.rand((), generator=g) < 0.5):
            image, mask = image.flip(-1), mask.flip(-1)
        return image, mask


def _sample_seed(*keys: int) -> int:
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class SegmentationFolder(Dataset):
    """``dataset[i] -> (image float (3, H, W) in [0, 1], mask int64 (H, W), 255 ignored)``.

    ``augment``: a ``JointAugment`` (training) or None; ``set_epoch(e)`` changes the draw.
    Holds the file names only; pixels are read per item.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        fmt: str = "auto",
        augment: JointAugment | None = None,
        seed: int = 0,
        limit: int | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.fmt = detect_seg_format(self.root) if fmt == "auto" else fmt
        if self.fmt not in SEG_FORMATS:
            raise DataError(f"unknown segmentation format {fmt!r}; choose from {SEG_FORMATS}")
        self.pairs = PAIRS[self.fmt](self.root, split)[:limit]
        if not self.pairs:
            raise DataError(f"the {self.fmt} split {split!r} under {self.root} has no images")
        self.split, self.classes = split, CLASSES[self.fmt]
        self.augment, self.seed, self.epoch = augment, seed, 0

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def read(self, index: int) -> tuple[Tensor, Tensor]:
        """The decoded image and mask of item `index` (no augmentation), checked."""
        from PIL import Image

        image_path, mask_path = self.pairs[index]
        try:
            with Image.open(image_path) as im:
                image = np.array(im.convert("RGB"), dtype=np.uint8)
            with Image.open(mask_path) as m:
                if m.mode not in ("L", "P"):
                    raise DataError(f"mask {mask_path} is mode {m.mode}, expected L or P")
                mask = np.array(m, dtype=np.uint8)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"cannot read {image_path} / {mask_path} ({exc})") from exc
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"{image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} "
                f"is {mask.shape[1]}x{mask.shape[0]}"
            )
        raw, mask = mask, LUTS[self.fmt][mask]
        if (mask == INVALID).any():
            values = np.unique(raw[mask == INVALID]).tolist()
            raise DataError(
                f"mask {mask_path} holds values {values[:5]} outside the {self.fmt} classes "
                f"that are not an ignore id"
            )
        return (
            torch.from_numpy(image).permute(2, 0, 1).float().div_(255),
            torch.from_numpy(mask),
        )

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = self.read(index)
        if self.augment is not None:
            g = torch.Generator().manual_seed(_sample_seed(self.seed, self.epoch, index))
            image, mask = self.augment(image, mask, g)
        return image, mask


def collate_segmentation(batch: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Stack samples, padding each to the batch's largest size (image 0, mask ignore)."""
    H = max(image.shape[1] for image, _ in batch)
    W = max(image.shape[2] for image, _ in batch)
    images, masks = [], []
    for image, mask in batch:
        pad = (0, W - image.shape[2], 0, H - image.shape[1])
        images.append(F.pad(image, pad))
        masks.append(F.pad(mask, pad, value=IGNORE_INDEX))
    return torch.stack(images), torch.stack(masks)
