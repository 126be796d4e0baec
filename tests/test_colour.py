"""Tests for das_kernels.colour: Pillow cross-check, identity at a = 0, gradients, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from das_kernels import colour as C

D64 = torch.float64
FIXED_OPS = tuple(op for op in C.COLOUR_OPS if op not in C.ENHANCE_OPS)

PIL_OPS = {
    "brightness": lambda img, f: ImageEnhance.Brightness(img).enhance(f),
    "contrast": lambda img, f: ImageEnhance.Contrast(img).enhance(f),
    "color": lambda img, f: ImageEnhance.Color(img).enhance(f),
    "sharpness": lambda img, f: ImageEnhance.Sharpness(img).enhance(f),
    "auto_contrast": lambda img, f: ImageOps.autocontrast(img),
    "equalize": lambda img, f: ImageOps.equalize(img),
    "solarize": lambda img, f: ImageOps.solarize(img, 128),
    "posterize": lambda img, f: ImageOps.posterize(img, 4),
}

# Pillow's error in uint8 units on top of its final truncation (Image.blend and the autocontrast
# LUT cast to int: < 1 unit). Enhance ops also round the degenerate image to uint8 first:
# sharpness and color by <= 0.5 per pixel, contrast by <= 0.5 (mean of rounded luminances)
# + 0.5 (int(mean + 0.5)); that error is scaled by |1 - f| = |a|. 0.01 covers Pillow's
# fixed-point luminance weights.
DEG_ERR = {"brightness": 0.0, "sharpness": 0.5, "color": 0.51, "contrast": 1.01}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add contention (gradcheck of conv2d slows ~50x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def uint8_images(kind: str, seed: int = 0) -> np.ndarray:
    """(N, H, W, 3) or (N, H, W) uint8 test images."""
    rng = np.random.default_rng(seed)
    if kind == "rgb":  # 1155 pixels: equalize step 4 (> 1, so its rounding term matters)
        return rng.integers(0, 256, (2, 33, 35, 3), dtype=np.uint8)
    if kind == "rgb_levels":  # few, unevenly used levels: large equalize steps, clipped LUT
        levels = np.array([3, 40, 41, 90, 128, 127, 200, 250], dtype=np.uint8)
        p = np.array([0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05])
        return rng.choice(levels, size=(2, 17, 19, 3), p=p)
    if kind == "gray":
        return rng.integers(0, 256, (2, 33, 35), dtype=np.uint8)
    if kind == "odd":
        return rng.integers(0, 256, (2, 7, 13, 3), dtype=np.uint8)
    if kind == "tiny":
        return rng.integers(0, 256, (2, 1, 1, 3), dtype=np.uint8)
    raise AssertionError(kind)


def to_tensor(u: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(u).to(D64) / 255
    return t.unsqueeze(1) if u.ndim == 3 else t.permute(0, 3, 1, 2)


def pillow(op: str, u: np.ndarray, f: float) -> torch.Tensor:
    return to_tensor(np.stack([np.asarray(PIL_OPS[op](Image.fromarray(im), f)) for im in u]))


def test_registry():
    assert set(C.COLOUR_OPS) == set(FIXED_OPS) | {"contrast", "color", "brightness", "sharpness"}
    assert len(C.COLOUR_OPS) == 8
    assert C.ENHANCE_OPS == ("contrast", "color", "brightness", "sharpness")
    assert C.DEFAULT_COLOUR_MAGNITUDE == {
        op: 0.1 if op in C.ENHANCE_OPS else 0.25 for op in FIXED_OPS + C.ENHANCE_OPS
    }


@pytest.mark.parametrize("kind", ["rgb", "rgb_levels", "gray", "odd", "tiny"])
@pytest.mark.parametrize("op", C.COLOUR_OPS)
def test_matches_pillow(op, kind):
    u = uint8_images(kind)
    x = to_tensor(u)
    if op in C.ENHANCE_OPS:
        for a in (-0.5, 0.3, 0.8):
            ref = pillow(op, u, 1 + a)
            tol = (1 + abs(a) * DEG_ERR[op]) / 255 + 1e-6
            torch.testing.assert_close(C.colour_transform(op, x, a), ref, atol=tol, rtol=0)
        return
    full = pillow(op, u, 0.0)
    tol = (1 / 255 if op == "auto_contrast" else 0) + 1e-6  # autocontrast LUT truncates
    for a in (-1.0, 1.5, 0.4):
        alpha = min(abs(a), 1.0)
        ref = x + alpha * (full - x)
        torch.testing.assert_close(C.colour_transform(op, x, a), ref, atol=alpha * tol, rtol=0)


def test_equalize_exercises_lut():
    """The Pillow test images hit non-identity LUTs, including the clip at 255."""
    for kind in ("rgb", "rgb_levels"):
        u = uint8_images(kind)
        assert not torch.equal(pillow("equalize", u, 0.0), to_tensor(u))


@pytest.mark.parametrize("dtype", [torch.float32, D64])
@pytest.mark.parametrize("op", C.COLOUR_OPS)
def test_identity_at_zero(op, dtype):
    g = torch.Generator().manual_seed(1)
    for shape in [(2, 3, 6, 7), (2, 1, 5, 4)]:
        x = torch.rand(shape, generator=g, dtype=dtype)
        assert torch.equal(C.colour_transform(op, x, 0.0), x)
        zero = torch.zeros(2, dtype=dtype, requires_grad=True)
        assert torch.equal(C.colour_transform(op, x, zero), x)
        mixed = torch.tensor([0.0, 0.7], dtype=dtype)
        assert torch.equal(C.colour_transform(op, x, mixed)[:1], x[:1])


@pytest.mark.parametrize("op", C.COLOUR_OPS)
def test_per_image_amounts(op):
    x = to_tensor(np.concatenate([uint8_images("rgb"), uint8_images("rgb", seed=1)[:1]]))
    amounts = [-0.6, 0.25, 1.3]
    out = C.colour_transform(op, x, torch.tensor(amounts, dtype=D64))
    for i, a in enumerate(amounts):
        expected = C.colour_transform(op, x[i : i + 1], a)
        torch.testing.assert_close(out[i : i + 1], expected, atol=1e-12, rtol=0)
    scalar = C.colour_transform(op, x, torch.tensor(0.25, dtype=D64))  # 0-d tensor broadcasts
    assert torch.equal(scalar, C.colour_transform(op, x, 0.25))


def _gradcheck_inputs(op: str):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 4, 5, generator=g, dtype=D64)
    if op == "solarize":  # away from the 0.5 threshold
        x = torch.where(x < 0.5, 0.1 + 0.6 * x, 0.3 + 0.6 * x)
    elif op in C.ENHANCE_OPS:  # away from the clamp
        x = 0.3 + 0.4 * x
    a = torch.tensor([0.3, -0.25] if op in C.ENHANCE_OPS else [0.4, -0.7], dtype=D64)
    return x.requires_grad_(), a.requires_grad_()


@pytest.mark.parametrize("op", [*C.ENHANCE_OPS, "solarize", "auto_contrast"])
def test_gradcheck(op):
    x, a = _gradcheck_inputs(op)
    assert torch.autograd.gradcheck(lambda x, a: C.colour_transform(op, x, a), (x, a))


@pytest.mark.parametrize("op", ["equalize", "posterize"])
def test_piecewise_constant_gradients(op):
    x, a = _gradcheck_inputs(op)
    a = torch.tensor([0.4, -1.5], dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: C.colour_transform(op, x.detach(), a), (a,))
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=D64)
    C.colour_transform(op, x, a).backward(grad_out)
    alpha = torch.tensor([0.4, 1.0], dtype=D64).view(2, 1, 1, 1)
    torch.testing.assert_close(x.grad, (1 - alpha) * grad_out, atol=1e-15, rtol=0)
    assert a.grad[1] == 0  # |a| >= 1: saturated blend weight
    edge = torch.tensor([1.0, -1.0], dtype=D64, requires_grad=True)
    C.colour_transform(op, x.detach(), edge).sum().backward()
    assert torch.equal(edge.grad, torch.zeros(2, dtype=D64))  # also zero at |a| == 1 exactly


@pytest.mark.parametrize("op", C.COLOUR_OPS)
def test_dtypes(op):
    x64 = to_tensor(uint8_images("odd"))
    a = torch.tensor([0.3, -0.8])
    out32 = C.colour_transform(op, x64.float(), a)
    out64 = C.colour_transform(op, x64, a.double())
    assert out32.dtype == torch.float32 and out64.dtype == D64
    torch.testing.assert_close(out32.double(), out64, atol=1e-5, rtol=0)
    for low in (torch.float16, torch.bfloat16):
        out = C.colour_transform(op, x64.to(low), a.to(low))
        assert out.dtype == low and out.shape == x64.shape
        torch.testing.assert_close(out.double(), out64, atol=2e-2, rtol=0)


@pytest.mark.parametrize(
    ("op", "x", "amount", "error", "match"),
    [
        ("blur", torch.rand(1, 3, 4, 4), 0.1, ValueError, r"unknown colour op 'blur'.*posterize"),
        ("color", torch.rand(3, 4, 4), 0.1, ValueError, r"4-D.*\(3, 4, 4\)"),
        ("color", torch.ones(1, 3, 4, 4, dtype=torch.uint8), 0.1, TypeError, "torch.uint8"),
        ("color", np.zeros((1, 3, 4, 4)), 0.1, TypeError, "ndarray"),
        ("color", torch.rand(1, 4, 4, 4), 0.1, ValueError, "1 or 3 channels, got C = 4"),
        ("color", torch.rand(2, 3, 4, 4), torch.zeros(3), ValueError, r"\(N,\) = \(2,\).*\(3,\)"),
        ("color", torch.rand(2, 3, 4, 4), torch.zeros(2, 1), ValueError, r"got shape \(2, 1\)"),
        ("color", torch.rand(2, 3, 4, 4), torch.zeros(2, device="meta"), ValueError, "meta"),
        ("color", torch.rand(2, 3, 4, 4), "0.5", TypeError, "amount must be a real number.*str"),
        ("color", torch.rand(2, 3, 4, 4), True, TypeError, "amount.*bool"),
        ("color", torch.rand(2, 3, 4, 4), torch.ones(2, dtype=torch.long), TypeError, "amount"),
        ("equalize", torch.rand(1, 3, 0, 4), 0.5, ValueError, r"H, W >= 1.*\(1, 3, 0, 4\)"),
        ("sharpness", torch.rand(1, 3, 4, 0), 0.5, ValueError, r"H, W >= 1"),
    ],
)
def test_bad_inputs(op, x, amount, error, match):
    with pytest.raises(error, match=match):
        C.colour_transform(op, x, amount)


def test_numpy_amounts_are_numbers():
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    for amount in (np.float32(0.25), np.int64(1)):
        expected = C.colour_transform("contrast", x, float(amount))
        torch.testing.assert_close(C.colour_transform("contrast", x, amount), expected)


# --- DRA's extra ops: invert, solarize_add, cutout ---------------------------------------------


def _pillow_each(u: np.ndarray, fn) -> torch.Tensor:
    return to_tensor(np.stack([np.asarray(fn(Image.fromarray(im))) for im in u]))


@pytest.mark.parametrize("kind", ["rgb", "gray", "odd"])
def test_extra_ops_match_pillow(kind):
    from PIL import ImageDraw

    u = uint8_images(kind)
    x = to_tensor(u)
    invert = _pillow_each(u, ImageOps.invert)
    torch.testing.assert_close(C.colour_transform("invert", x, 1.0), invert, atol=1e-12, rtol=0)
    lut = [min(255, i + 110) if i < 128 else i for i in range(256)]
    added = _pillow_each(u, lambda im: im.point(lut * len(im.getbands())))
    out = C.colour_transform("solarize_add", x, 110 / 255)
    torch.testing.assert_close(out, added, atol=1e-9, rtol=0)
    h, w = u.shape[1:3]
    side = round(0.4 * min(h, w))

    def cut(im: Image.Image) -> Image.Image:
        im = im.copy()
        y0, x0 = max(h // 2 - side // 2, 0), max(w // 2 - side // 2, 0)
        fill = 128 if im.mode == "L" else (128, 128, 128)
        ImageDraw.Draw(im).rectangle((x0, y0, x0 + side - 1, y0 + side - 1), fill=fill)
        return im

    torch.testing.assert_close(C.colour_transform("cutout", x, 0.4), _pillow_each(u, cut))


@pytest.mark.parametrize("op", C.DRA_EXTRA_OPS)
def test_extra_ops_identity_at_zero_and_gradients(op):
    x = to_tensor(uint8_images("odd"))
    assert torch.equal(C.colour_transform(op, x, 0.0), x)
    xg = x.clone().requires_grad_()
    a = torch.tensor([0.3, 0.6], dtype=D64, requires_grad=op != "cutout")
    C.colour_transform(op, xg, a).sum().backward()
    assert xg.grad is not None and bool(xg.grad.abs().sum() > 0)
    if op != "cutout":
        assert a.grad is not None and bool(a.grad.abs().sum() > 0)


def test_cutout_centres_follow_the_generator():
    x = torch.rand(4, 3, 16, 16, dtype=D64)
    draws = [C.colour_transform("cutout", x, 0.25, torch.Generator().manual_seed(5)) for _ in "ab"]
    assert torch.equal(draws[0], draws[1])
    filled = (draws[0] == 128 / 255).all(1).flatten(1).sum(1)
    assert bool((filled <= 16).all()) and bool((filled > 0).all())  # 4x4, clipped at borders
    other = C.colour_transform("cutout", x, 0.25, torch.Generator().manual_seed(6))
    assert not torch.equal(draws[0], other)
