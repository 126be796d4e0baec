"""Data formats, clear errors, augmentation and deterministic, sharded batch streams."""

import gzip
import pickle

import numpy as np
import pytest
import torch
from das_testing import NO_CIFAR, SHARED

from das.data import BatchLoader, BatchStream, DataError, augment_batch, load_data


def test_digits_default():
    b = load_data("digits")
    assert b.name == "digits" and b.num_classes == 10 and not b.flip
    assert b.train.x.shape[1:] == (1, 16, 16) and b.train.x.dtype == torch.uint8
    assert len(b.train) + len(b.val) == 1797
    assert len(b.val) == pytest.approx(1797 * 0.2, abs=10)
    b32 = load_data("digits", image_size=32)
    assert b32.image_size == 32


def test_npz_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    np.savez(
        p,
        x_train=rng.integers(0, 255, (20, 8, 8, 3), dtype=np.uint8),
        y_train=np.arange(20) % 4,
        x_val=rng.integers(0, 255, (6, 8, 8, 3), dtype=np.uint8),
        y_val=np.arange(6) % 4,
        classes=np.array(["a", "b", "c", "d"]),
    )
    b = load_data(str(p))
    assert b.name == "npz" and b.num_classes == 4 and b.classes == ["a", "b", "c", "d"]
    assert b.train.x.shape == (20, 3, 8, 8) and len(b.val) == 6 and b.flip


def test_npz_errors(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"bad\.npz lacks \['x_train', 'y_train'\]"):
        load_data(str(p))
    q = tmp_path / "broken.npz"
    q.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="broken.npz"):
        load_data(str(q))


def test_missing_path_names_it(tmp_path):
    with pytest.raises(DataError, match="not found: .*nowhere"):
        load_data(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot tell the format"):
        load_data(str(tmp_path / "empty"))


def _cifar_dir(root, n=10, hundred=False):
    root.mkdir()
    rng = np.random.default_rng(0)
    key = b"fine_labels" if hundred else b"labels"
    names = ["train", "test"] if hundred else ["data_batch_1", "data_batch_2", "test_batch"]
    for name in names:
        d = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), key: list(range(n))}
        with open(root / name, "wb") as f:
            pickle.dump(d, f)
    if not hundred:
        with open(root / "batches.meta", "wb") as f:
            pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)


def test_cifar10_and_100(tmp_path):
    _cifar_dir(tmp_path / "c10")
    b = load_data(str(tmp_path / "c10"))
    assert b.name == "cifar" and len(b.train) == 20 and len(b.val) == 10
    assert b.classes[3] == "c3" and b.train.x.shape[1:] == (3, 32, 32)
    _cifar_dir(tmp_path / "c100", n=12, hundred=True)
    b = load_data(str(tmp_path / "c100"), fmt="cifar")
    assert len(b.train) == 12 and b.num_classes == 12


def test_cifar_malformed(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    (root / "data_batch_1").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_1.*CIFAR"):
        load_data(str(root))


def _idx(path, arr, gz):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path, gz):
    ext = ".gz" if gz else ""
    rng = np.random.default_rng(0)
    _idx(tmp_path / f"train-images-idx3-ubyte{ext}", rng.integers(0, 255, (30, 28, 28)), gz)
    _idx(tmp_path / f"train-labels-idx1-ubyte{ext}", np.arange(30) % 10, gz)
    _idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", rng.integers(0, 255, (10, 28, 28)), gz)
    _idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", np.arange(10), gz)
    b = load_data(str(tmp_path))
    assert b.name == "mnist" and len(b.train) == 30 and len(b.val) == 10
    assert b.train.x.shape[1:] == (1, 28, 28) and not b.flip


def test_mnist_bad_magic(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04" + bytes(8))
    _idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(3), False)
    with pytest.raises(DataError, match="bad magic"):
        load_data(str(tmp_path))


def test_image_folder(tmp_path):
    from PIL import Image

    for split, n in (("train", 3), ("val", 1)):
        for cls in ("cat", "dog"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (10, 10), (i * 40, 0, 0)).save(d / f"{i}.png")
    b = load_data(str(tmp_path), image_size=8)
    assert b.name == "folder" and b.classes == ["cat", "dog"]
    assert len(b.train) == 6 and len(b.val) == 2 and b.image_size == 8


def test_augment_is_deterministic_and_shape_preserving():
    x = torch.rand(4, 3, 16, 16)
    a = augment_batch(x, torch.Generator().manual_seed(1), pad=2, flip=True, cutout=4)
    b = augment_batch(x, torch.Generator().manual_seed(1), pad=2, flip=True, cutout=4)
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)
    assert torch.equal(augment_batch(x, torch.Generator()), x)  # nothing asked, nothing done


def test_loader_is_pure_and_sharded():
    b = load_data("digits", image_size=8, limit_train=50)
    mk = lambda rank, world: BatchLoader(  # noqa: E731
        b.train, 8, b.mean, b.std, seed=3, pad=1, rank=rank, world=world
    )
    x1, y1 = mk(0, 1).batch(2, 1)
    x2, y2 = mk(0, 1).batch(2, 1)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    shards = [mk(r, 2)._indices(0) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 25
    assert set(shards[0].tolist()) | set(shards[1].tolist()) == set(range(50))
    ev = [BatchLoader(b.val, 7, b.mean, b.std, train=False, rank=r, world=3) for r in range(3)]
    assert sum(len(e._indices(0)) for e in ev) == len(b.val)


def test_stream_resumes_exactly():
    b = load_data("digits", image_size=8, limit_train=40)
    loader = BatchLoader(b.train, 16, b.mean, b.std, seed=0, pad=1, drop_last=True)
    s = BatchStream(loader)
    seen = [next(s) for _ in range(3)]  # crosses an epoch boundary (2 batches per epoch)
    state = s.state()
    more = [next(s) for _ in range(3)]
    s2 = BatchStream(loader)
    s2.load_state(state)
    again = [next(s2) for _ in range(3)]
    assert all(torch.equal(a[0], b_[0]) for a, b_ in zip(more, again))
    assert not torch.equal(seen[0][0], seen[2][0])


@pytest.mark.skipif(NO_CIFAR, reason=f"no {SHARED}/cifar10_small.npz")
def test_shared_cifar10_small():
    b = load_data(str(SHARED / "cifar10_small.npz"))
    assert (len(b.train), len(b.val), b.num_classes) == (10000, 2000, 10)
    assert b.classes[0] == "airplane" and b.flip


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="no shared MNIST")
def test_shared_mnist_t10k_split():
    b = load_data(str(SHARED / "mnist"))
    assert len(b.train) + len(b.val) == 10000 and b.image_size == 28


# ----------------------------------------------------------------------------- streaming data


def _imagenet_tree(root, size=(12, 10), n_train=4, n_val=2, wnids=("n01440764", "n02102040")):
    """A tiny ImageNet layout: train/<wnid>/*.JPEG, val/<wnid>/*.JPEG (sizes vary)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for wnid in wnids:
            d = root / split / wnid
            d.mkdir(parents=True)
            for i in range(n):
                h, w = size[0] + i % 2, size[1] + i % 3
                pix = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pix).save(d / f"{wnid}_{i}.JPEG", quality=95)
    return root


def _same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for (xa, ya), (xb, yb) in zip(batches_a, batches_b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_imagenet_layout_is_lazy(tmp_path):
    root = _imagenet_tree(tmp_path / "inet")
    b = load_data(str(root), image_size=8)
    assert b.name == "folder" and b.lazy and b.classes == ["n01440764", "n02102040"]
    assert (len(b.train), len(b.val), b.num_classes, b.image_size) == (8, 4, 2, 8)
    assert b.train.x.shape == (8, 3, 8, 8) and b.train.y.tolist() == [0] * 4 + [1] * 4
    assert b.preview(3).shape == (3, 3, 8, 8) and b.aspect == 1.0
    # the same pixels, statistics and batches as decoding everything up front
    m = load_data(str(root), image_size=8, lazy=False)
    assert not m.lazy and isinstance(m.train.x, torch.Tensor)
    assert torch.equal(m.train.x, b.train.x[:]) and (m.mean, m.std) == (b.mean, b.std)
    mk = lambda s: BatchLoader(s, 3, b.mean, b.std, seed=1, pad=1, flip=True, cutout=2)  # noqa: E731
    _same(list(mk(b.train).epoch_batches(1)), list(mk(m.train).epoch_batches(1)))
    with pytest.raises(DataError, match="only image folders are read lazily"):
        load_data("digits", lazy=True)


def test_folder_set_holds_no_pixels(tmp_path):
    from PIL import Image

    small = load_data(str(_imagenet_tree(tmp_path / "s", size=(8, 8))), image_size=8)
    big = load_data(str(_imagenet_tree(tmp_path / "b", size=(96, 96))), image_size=64)
    # the pickled set (what a worker process gets) is its file list, whatever the pixels
    assert len(pickle.dumps(big.train)) == len(pickle.dumps(small.train)) < 4000
    # pixels are read when a batch is: a file changed on disk after loading is seen
    path = big.train.path(0)
    before = big.train.x[0].clone()
    Image.new("RGB", (96, 96), (255, 255, 255)).save(path, format="JPEG")
    after = big.train.x[0]
    assert not torch.equal(before, after) and int(after.min()) >= 250


def _stream_batches(loader, n, state=None):
    s = BatchStream(loader)
    if state is not None:
        s.load_state(state)
    return [next(s) for _ in range(n)], s.state()


@pytest.mark.parametrize("lazy", [True, False])
def test_workers_give_the_same_batches(tmp_path, lazy):
    root = _imagenet_tree(tmp_path / "inet", n_train=5)
    b = load_data(str(root), image_size=8, lazy=lazy)
    kw = dict(seed=4, stream=1, pad=1, flip=True, cutout=3, drop_last=True)
    off = BatchLoader(b.train, 3, b.mean, b.std, **kw)
    on = BatchLoader(b.train, 3, b.mean, b.std, num_workers=2, **kw)
    rng = torch.get_rng_state()
    # a stream across epoch boundaries (3 batches an epoch), and a resume mid-epoch
    want, _ = _stream_batches(off, 8)
    got, _ = _stream_batches(on, 8)
    _same(want, got)
    assert on._it is not None  # read by the workers
    first, state = _stream_batches(on, 4)
    assert state == {"epoch": 1, "index": 1}
    resumed, _ = _stream_batches(
        BatchLoader(b.train, 3, b.mean, b.std, num_workers=2, **kw), 4, state
    )
    _same(want[4:], resumed)
    # das.train's pattern: batch(epoch, i, epoch_order(epoch)), stopped early, then the next epoch
    for epoch in (0, 1):
        idx = on.epoch_order(epoch)
        assert on._indices(epoch) is idx
        _same([off.batch(epoch, i) for i in range(2)], [on.batch(epoch, i, idx) for i in range(2)])
    # evaluation: sharded, no augmentation, the same twice
    for rank in range(2):
        ev = dict(train=False, rank=rank, world=2)
        e_off = BatchLoader(b.val, 3, b.mean, b.std, **ev)
        e_on = BatchLoader(b.val, 3, b.mean, b.std, num_workers=2, **ev)
        _same(list(e_off.epoch_batches(0)), list(e_on.epoch_batches(0)))
        _same(list(e_off.epoch_batches(0)), list(e_on.epoch_batches(0)))
    assert torch.equal(torch.get_rng_state(), rng)  # the workers drew nothing from it


def test_lazy_shards_are_disjoint(tmp_path):
    b = load_data(str(_imagenet_tree(tmp_path / "inet", n_train=5)), image_size=8)
    whole = BatchLoader(b.train, 2, b.mean, b.std, seed=2).epoch_order(3)
    shards = [BatchLoader(b.train, 2, b.mean, b.std, seed=2, rank=r, world=3) for r in range(3)]
    orders = [s.epoch_order(3) for s in shards]
    assert [len(o) for o in orders] == [4, 4, 4]  # 10 images padded to 12, as DistributedSampler
    assert set(torch.cat(orders).tolist()) == set(range(10))
    assert torch.equal(torch.stack(orders, 1).flatten()[: len(whole)], whole)
    assert all(len(s) == 2 for s in shards)


def test_corrupt_image_is_named(tmp_path):
    root = _imagenet_tree(tmp_path / "inet")
    bad = root / "train" / "n02102040" / "n02102040_1.JPEG"
    bad.write_bytes(b"\xff\xd8\xff garbage, not a JPEG")
    with pytest.raises(DataError, match=r"cannot read image .*n02102040_1\.JPEG"):
        load_data(str(root), image_size=8)  # the statistics read it
    bad.unlink()
    b = load_data(str(root), image_size=8)
    (root / "train" / "n01440764" / "n01440764_2.JPEG").write_bytes(b"truncated")
    for workers in (0, 2):
        loader = BatchLoader(b.train, 7, b.mean, b.std, train=False, num_workers=workers)
        with pytest.raises(DataError, match=r"cannot read image .*n01440764_2\.JPEG"):
            list(loader.epoch_batches(0))


def test_folder_errors(tmp_path):
    root = _imagenet_tree(tmp_path / "inet")
    (root / "train" / "n09999999").mkdir()
    with pytest.raises(DataError, match=r"class folder .*n09999999 holds no images"):
        load_data(str(root))
    (root / "train" / "n09999999").rmdir()
    (root / "val" / "n07777777").mkdir()
    with pytest.raises(DataError, match=r"n07777777.*not among the training classes"):
        load_data(str(root))
    # ImageNet's raw validation split: images directly in val/, no class folders
    flat = _imagenet_tree(tmp_path / "flat")
    for d in (flat / "val").iterdir():
        for f in d.iterdir():
            f.rename(flat / "val" / f.name)
        d.rmdir()
    with pytest.raises(DataError, match=r"validation split .*val has no class sub-dir.*4 images"):
        load_data(str(flat))
    one = _imagenet_tree(tmp_path / "one", n_train=1, n_val=0)
    with pytest.raises(DataError, match=r"class folder .*val/n01440764 holds no images"):
        load_data(str(one))
    for d in (one / "val").iterdir():
        d.rmdir()
    with pytest.raises(DataError, match=r"validation split .*val has no class sub-directories"):
        load_data(str(one))
    (one / "val").rmdir()
    with pytest.raises(DataError, match="validation split has no images"):
        load_data(str(one))  # 1 image per class: the 80/20 split leaves nothing for val


def test_npz_bad_contents(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (10, 4, 4), dtype=np.uint8)
    p = tmp_path / "empty.npz"
    np.savez(p, x_train=np.zeros((0, 4, 4), np.uint8), y_train=np.zeros(0, np.int64))
    with pytest.raises(DataError, match=r"empty\.npz:x_train: no images"):
        load_data(str(p))
    q = tmp_path / "nan.npz"
    np.savez(q, x_train=np.full((6, 4, 4), np.nan, np.float32), y_train=np.arange(6) % 2)
    with pytest.raises(DataError, match=r"nan\.npz:x_train: 6 of 6 images hold NaN"):
        load_data(str(q))
    r = tmp_path / "labels.npz"
    np.savez(r, x_train=x, y_train=100 + np.arange(10), x_val=x[:4], y_val=100 + np.arange(4))
    with pytest.raises(DataError, match=r"labels\.npz: labels must be 0\.\.N-1.*100 to 109"):
        load_data(str(r))
    s = tmp_path / "named.npz"
    np.savez(s, x_train=x, y_train=np.arange(10) % 3, classes=np.array(["a", "b"]))
    with pytest.raises(DataError, match=r"named\.npz: 2 class names but labels go up to 2"):
        load_data(str(s))
