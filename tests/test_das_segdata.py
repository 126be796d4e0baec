"""Segmentation data (das.segdata): the CamVid, VOC and Cityscapes layouts on tiny fake
trees, joint augmentation, clear errors; ../shared/data/camvid when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from das.data import DataError
from das.segdata import (
    IGNORE_INDEX,
    JointAugment,
    SegmentationFolder,
    collate_segmentation,
    detect_seg_format,
)

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


def _write(path: Path, array: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette:
        image = image.convert("P") if array.ndim == 3 else Image.fromarray(array, mode="L")
        image.putpalette([v for i in range(256) for v in (i, i, i)])
    image.save(path)


def _image(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(values, h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).choice(np.array(values, dtype=np.uint8), (h, w))


def _camvid(root: Path, mask_values=(0, 3, 10, 11), n: int = 3) -> Path:
    for split in ("train", "val"):
        for i in range(n):
            _write(root / split / f"f{i}.png", _image(seed=i))
            _write(root / f"{split}annot" / f"f{i}.png", _mask(mask_values, seed=i))
    return root


def _voc(root: Path) -> Path:
    names = ["2007_000001", "2007_000002"]
    for i, name in enumerate(names):
        _write(root / "JPEGImages" / f"{name}.jpg", _image(seed=i))
        _write(root / "SegmentationClass" / f"{name}.png", _mask((0, 15, 20, 255), seed=i), True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for split in ("train", "val"):
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names))
    return root


def _cityscapes(root: Path) -> Path:
    for split in ("train", "val"):
        stem = f"aachen_000000_00001{split == 'val'}"
        _write(root / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png", _image())
        labels = _mask((0, 7, 26, 33, 4))  # unlabeled, road, car, bicycle, static
        _write(root / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelIds.png", labels)
    return root


def test_camvid_layout_maps_void_to_the_ignore_id(tmp_path):
    root = _camvid(tmp_path / "camvid")
    assert detect_seg_format(root) == "camvid"
    ds = SegmentationFolder(root, "train")
    image, mask = ds[0]
    assert image.shape == (3, 12, 16) and image.dtype == torch.float32 and mask.shape == (12, 16)
    raw = np.array(Image.open(root / "trainannot" / "f0.png"))
    expected = torch.from_numpy(np.where(raw == 11, IGNORE_INDEX, raw).astype(np.int64))
    assert torch.equal(mask, expected)
    assert len(ds.classes) == 11


def test_voc_palette_index_is_the_class(tmp_path):
    root = _voc(tmp_path / "voc")
    assert detect_seg_format(root) == "voc"
    ds = SegmentationFolder(root, "val")
    _, mask = ds[1]
    assert set(mask.unique().tolist()) <= {0, 15, 20, IGNORE_INDEX} and len(ds) == 2


def test_cityscapes_label_ids_become_train_ids(tmp_path):
    root = _cityscapes(tmp_path / "cityscapes")
    assert detect_seg_format(root) == "cityscapes"
    _, mask = SegmentationFolder(root, "train")[0]
    raw = np.array(Image.open(next((root / "gtFine" / "train").rglob("*.png"))))
    lut = {0: IGNORE_INDEX, 7: 0, 26: 13, 33: 18, 4: IGNORE_INDEX}
    assert torch.equal(mask, torch.from_numpy(np.vectorize(lut.get)(raw).astype(np.int64)))


def test_folder_holds_file_names_not_pixels(tmp_path):
    root = _camvid(tmp_path / "camvid")
    ds = SegmentationFolder(root, "train")
    _write(root / "train" / "f0.png", np.zeros((12, 16, 3), dtype=np.uint8))  # changed on disk
    assert float(ds[0][0].abs().sum()) == 0.0


def test_joint_augment_is_a_pure_function_of_seed_epoch_index(tmp_path):
    root = _camvid(tmp_path / "camvid")
    ds = SegmentationFolder(root, "train", augment=JointAugment((10, 14)), seed=3)
    a, b = ds[1], ds[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (3, 10, 14) and a[1].shape == (10, 14)
    ds.set_epoch(1)
    draws = [ds[1][1] for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    values = set(torch.cat([ds[i][1].flatten() for i in range(3)]).tolist())
    assert values <= {0, 3, 10, IGNORE_INDEX}  # nearest resampling: no new labels


def test_augment_pads_the_mask_with_the_ignore_id():
    image, mask = torch.rand(3, 4, 4), torch.zeros(4, 4, dtype=torch.long)
    out_image, out_mask = JointAugment((8, 8), scale=(1.0, 1.0), flip=False)(
        image, mask, torch.Generator().manual_seed(0)
    )
    assert out_image.shape == (3, 8, 8) and int((out_mask == IGNORE_INDEX).sum()) == 64 - 16
    assert torch.equal(out_image[:, :4, :4], image)


def test_collate_pads_to_the_largest_sample():
    batch = [(torch.rand(3, 4, 5), torch.zeros(4, 5, dtype=torch.long)),
             (torch.rand(3, 6, 3), torch.ones(6, 3, dtype=torch.long))]  # fmt: skip
    images, masks = collate_segmentation(batch)
    assert images.shape == (2, 3, 6, 5) and masks.shape == (2, 6, 5)
    assert int(masks[0, 5, 0]) == IGNORE_INDEX and int(masks[1, 0, 4]) == IGNORE_INDEX


def test_clear_errors_name_the_file(tmp_path):
    root = _camvid(tmp_path / "camvid")
    (root / "trainannot" / "f1.png").unlink()
    with pytest.raises(DataError, match=r"no mask for .*f1\.png"):
        SegmentationFolder(root, "train")
    _write(root / "valannot" / "f2.png", _mask((0, 1), h=5, w=5))
    with pytest.raises(DataError, match=r"f2\.png is 16x12 but its mask .* is 5x5"):
        SegmentationFolder(root, "val")[2]
    bad = _camvid(tmp_path / "bad", mask_values=(0, 42))
    with pytest.raises(DataError, match=r"mask .*f0\.png holds values \[42\]"):
        SegmentationFolder(bad, "train")[0]
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "trainannot").mkdir()
    with pytest.raises(DataError, match="has no images"):
        SegmentationFolder(empty, "train")
    with pytest.raises(DataError, match="not a segmentation layout"):
        detect_seg_format(tmp_path)
    with pytest.raises(DataError, match="split 'test' not found"):
        SegmentationFolder(root, "test")


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"{CAMVID} is absent")
def test_shared_camvid():
    train, val = SegmentationFolder(CAMVID, "train"), SegmentationFolder(CAMVID, "val")
    assert (len(train), len(val)) == (367, 101)
    image, mask = val[0]
    assert image.shape == (3, 180, 240) and mask.shape == (180, 240)
    assert int(mask[mask != IGNORE_INDEX].max()) <= 10
