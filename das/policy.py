"""Image-to-image augmentation policies: ``python -m das.train --policy SPEC``.

A policy augments each training image of the plain 2D network (the ``baseline`` variant: one
frame, no temporal module) on top of the loader's flip / pad-crop; evaluation sees the clean
image. Specs:

* ``flipcrop``: nothing more than the loader's flip and pad-crop (the plain baseline).
* ``randaugment:N,M``, ``trivialaugment``, ``autoaugment:cifar10|imagenet|svhn``: kornia's
  ``kornia.augmentation.auto`` implementations, not re-implementations:
  ``RandAugment(n=N, m=M)`` (1 <= N <= 15 ops, magnitude 0 < M < 30: each op at M/30 of
  its range, as in kornia), ``TrivialAugment()``, ``AutoAugment(policy=...)``.
* ``dra:policy.json``: a policy learned by ``das.search --method dra``
  (:class:`das.dra.DRAPolicy`: per layer an op drawn by its weights, magnitude from
  N(mu, sigma^2), applied with probability U(0.2, 0.8)).
* ``das:genotype.json``: DAS image-to-image (the DAS paper's supplementary Table 11): the
  genotype's cell makes its T frames and one frame drawn per sample is the augmented image,
  divided by the cell's nominal intensity gain ``(2**nodes - 1) / nodes`` so training and
  evaluation images have one scale. A genotype whose frame steps are all 0 (T = 1 with
  ``centered`` steps) is the identity and is refused: search with ``--frames 1 --step-mode
  forward``.

Kornia and DRA policies act on [0, 1] pixels: the normalised batch is un-normalised with the
data's mean/std, clamped to [0, 1], augmented and normalised back (kornia's on three
channels: a grayscale image goes through as three equal channels, back as their mean).
Kornia draws a policy's op(s) once per call for the whole batch; the papers draw them per
image, so kornia's policy is called on each image separately (``build_policy(group=1)``).
Their randomness comes from torch's global generator, which the trainer seeds per rank and
checkpoints, so ``--resume`` repeats the augmentation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from das.cell import DiscreteCell, Genotype
from das_kernels.affine import frame_steps

__all__ = [
    "AUTOAUGMENT_POLICIES",
    "POLICY_KINDS",
    "PolicyAugment",
    "PolicySpec",
    "build_policy",
    "parse_policy",
    "parse_policy_list",
]

POLICY_KINDS = ("flipcrop", "randaugment", "trivialaugment", "autoaugment", "dra", "das")
AUTOAUGMENT_POLICIES = ("cifar10", "imagenet", "svhn")
RANDAUGMENT_M_SCALE = 30  # kornia's RandAugment: magnitude m / 30 of each op's range, 0 < m < 30


@dataclass(frozen=True)
class PolicySpec:
    """A parsed ``--policy``: its kind and arguments ((N, M), (policy name,) or (path,))."""

    kind: str
    args: tuple[str | int, ...] = ()

    @property
    def text(self) -> str:
        if not self.args:
            return self.kind
        return f"{self.kind}:" + ",".join(str(a) for a in self.args)

    @property
    def name(self) -> str:
        """A folder-safe name: ``randaugment-2-9``, ``autoaugment-cifar10``, ``dra``, ``das``."""
        if self.kind in ("dra", "das") or not self.args:
            return self.kind
        return "-".join([self.kind, *(str(a) for a in self.args)])


def parse_policy(text: str) -> PolicySpec:
    """``--policy`` text -> PolicySpec; ValueError saying what is wrong (files are read)."""
    kind, _, rest = text.strip().partition(":")
    if kind not in POLICY_KINDS:
        if text.endswith(".json"):
            return _json_spec(text)
        raise ValueError(f"unknown policy {text!r}; choose from {', '.join(_SYNTAX)}")
    if kind in ("flipcrop", "trivialaugment"):
        if rest:
            raise ValueError(f"policy {kind} takes no arguments, got {text!r}")
        return PolicySpec(kind)
    if kind == "randaugment":
        parts = rest.split(",")
        try:
            n, m = (int(p) for p in parts)
        except ValueError:
            n = m = -1
        max_n = _randaugment_ops()
        if len(parts) != 2 or not 1 <= n <= max_n or not 0 < m < RANDAUGMENT_M_SCALE:
            raise ValueError(
                f"expected randaugment:N,M with 1 <= N <= {max_n} ops (kornia's RandAugment "
                f"draws them without replacement) and magnitude 0 < M < {RANDAUGMENT_M_SCALE} "
                f"(kornia's scale, exclusive), got {text!r}"
            )
        return PolicySpec(kind, (n, m))
    if kind == "autoaugment":
        if rest not in AUTOAUGMENT_POLICIES:
            raise ValueError(f"expected autoaugment:{'|'.join(AUTOAUGMENT_POLICIES)}, got {text!r}")
        return PolicySpec(kind, (rest,))
    if not rest:
        raise ValueError(f"expected {kind}:FILE.json, got {text!r}")
    spec = _json_spec(rest)
    if spec.kind != kind:
        raise ValueError(f"{rest} is a {spec.kind} file, not a {kind} one (use {spec.kind}:)")
    return spec


def _randaugment_ops() -> int:
    """How many ops kornia's default RandAugment chooses from (the largest N)."""
    from kornia.augmentation.auto.rand_augment.rand_augment import default_policy

    return len(default_policy)


_SYNTAX = (
    "flipcrop",
    "randaugment:N,M",
    "trivialaugment",
    f"autoaugment:{'|'.join(AUTOAUGMENT_POLICIES)}",
    "dra:policy.json",
    "das:genotype.json",
)


def _json_spec(path: str) -> PolicySpec:
    """A policy.json (DRA) or genotype.json (DAS) file, checked by loading it."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"policy file not found: {path}")
    try:
        d = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc})") from None
    if isinstance(d, dict) and d.get("method") == "dra":
        from das.dra import DRAPolicy

        DRAPolicy.from_dict(d, where=path)
        return PolicySpec("dra", (str(file),))
    if isinstance(d, dict) and "ops" in d:
        _check_not_identity(Genotype.load(file), path)
        return PolicySpec("das", (str(file),))
    raise ValueError(
        f"{path} is neither a DRA policy.json (das.search --method dra) nor a genotype.json"
    )


def _check_not_identity(genotype: Genotype, where: str) -> None:
    if not bool(frame_steps(genotype.frames, genotype.mode).ne(0).any()):
        raise ValueError(
            f"{where}: every frame of this genotype (T={genotype.frames}, steps "
            f"{genotype.mode}) has step 0, so it is the identity; search with --frames 1 "
            "--step-mode forward for a one-frame image-to-image genotype"
        )


def parse_policy_list(text: str) -> list[PolicySpec]:
    """``--policies`` (comma separated; ``randaugment:N,M`` keeps its comma: a token that is a
    bare integer belongs to the policy before it)."""
    tokens: list[str] = []
    for token in (t.strip() for t in text.split(",")):
        if token.isdigit() and tokens:
            tokens[-1] += "," + token
        elif token:
            tokens.append(token)
    if not tokens:
        raise ValueError("no policies given")
    specs = [parse_policy(t) for t in tokens]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(
            f"policies repeat a name: {names} (each run is OUT/<name>; dra: and das: files "
            "are named dra and das, so compare two of a kind in separate ablations)"
        )
    return specs


class PolicyAugment(nn.Module):
    """The 2D network's "cell" under a policy: training ``(B, C, H, W)`` normalised images ->
    augmented ``(B, 1, C, H, W)``; evaluation -> ``x[:, None]`` (the clean image).

    ``augment`` maps a batch to an augmented batch, on [0, 1] pixels when ``in_pixels``
    (un-normalised with ``mean``/``std`` around it) else on the normalised batch; None: the
    identity (flipcrop). ``source``, the module behind ``augment`` (kornia op, DRA policy,
    cell), follows ``.to()`` and ``.train()`` but is not a submodule: the policy is rebuilt
    from its spec, so checkpoints hold none of its state and load into the plain 2D network
    (what evaluation builds: the policy does not act there)."""

    def __init__(
        self,
        augment: Callable[[Tensor], Tensor] | None,
        mean: Sequence[float],
        std: Sequence[float],
        in_pixels: bool = True,
        source: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.augment, self.in_pixels = augment, in_pixels
        self._source = () if source is None else (source,)  # a tuple: not registered
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @property
    def source(self) -> nn.Module | None:
        return self._source[0] if self._source else None

    def _apply(self, fn: Callable, recurse: bool = True) -> PolicyAugment:  # .to(), .cuda()
        super()._apply(fn, recurse)
        for module in self._source:
            module._apply(fn, recurse)
        return self

    def train(self, mode: bool = True) -> PolicyAugment:
        super().train(mode)
        for module in self._source:
            module.train(mode)
        return self

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.augment is None:
            return x.unsqueeze(1)
        if not self.in_pixels:
            return self.augment(x).unsqueeze(1)
        pixels = (x * self.std + self.mean).clamp(0, 1)
        out = self.augment(pixels)
        return ((out - self.mean) / self.std).to(x.dtype).unsqueeze(1)


def _kornia_per_group(op: nn.Module, group: int) -> Callable[[Tensor], Tensor]:
    """`op` (a ``kornia.augmentation.auto`` policy) on (B, C, H, W) pixels, called once per
    `group` images: kornia draws the op(s) once per call for its whole batch (only magnitudes
    and probabilities per image), while the papers draw them per image, so ``group=1``
    (every image its own draw) is the faithful setting. Grayscale images (C = 1) go through
    as three equal channels and come back as their mean (kornia's colour ops need C = 3)."""

    def apply(x: Tensor) -> Tensor:
        rgb = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        out = torch.cat([op(part) for part in rgb.split(group)])
        return out.mean(1, keepdim=True) if x.shape[1] == 1 else out

    return apply


def build_policy(
    spec: PolicySpec,
    mean: Sequence[float],
    std: Sequence[float],
    aspect: float = 1.0,
    group: int = 1,
) -> PolicyAugment:
    """The :class:`PolicyAugment` of `spec` for data normalised with (mean, std); kornia's
    policies draw their ops once per `group` images (1: per image, as in the papers)."""
    if spec.kind == "flipcrop":
        return PolicyAugment(None, mean, std)
    if spec.kind in ("randaugment", "trivialaugment", "autoaugment"):
        import kornia.augmentation.auto as auto

        if spec.kind == "randaugment":
            n, m = spec.args
            op: nn.Module = auto.RandAugment(n=int(n), m=int(m))
        elif spec.kind == "trivialaugment":
            op = auto.TrivialAugment()
        else:
            op = auto.AutoAugment(policy=str(spec.args[0]))
        return PolicyAugment(_kornia_per_group(op, group), mean, std, source=op)
    path = str(spec.args[0])
    if spec.kind == "dra":
        from das.dra import DRAPolicy

        policy = DRAPolicy.load(path)
        return PolicyAugment(policy.augment, mean, std, source=policy)
    genotype = Genotype.load(path)
    _check_not_identity(genotype, path)
    from das.variants import RandomFrameCell

    frames = RandomFrameCell(DiscreteCell(genotype, aspect, mean, std))
    gain = (2.0**genotype.nodes - 1) / genotype.nodes

    def one_frame(x: Tensor) -> Tensor:
        return frames(x)[:, 0] / gain

    return PolicyAugment(one_frame, mean, std, in_pixels=False, source=frames)
