"""The typed configuration of a run: what ``python -m das.search`` / ``das.train`` /
``das.evaluate`` were asked to do, as dataclasses.

A :class:`RunConfig` composes a :class:`DataConfig`, a :class:`ModelConfig`, a
:class:`RuntimeConfig`, a :class:`TaskConfig` (``--task`` and the segmentation settings; a
configuration written before it existed reads as classification) and, by command, a
:class:`CellConfig` + :class:`SearchConfig` (search) or a :class:`TrainConfig` (train).
Every field is a command-line option of the same name (``--width-mult`` ->
``model.width_mult``); the defaults live in one place, the parsers of :mod:`das.cli`,
which build the config with :meth:`RunConfig.from_namespace` and validate it with
:func:`check` (a :class:`ConfigError` there becomes exit status 2, its message naming the
option). Checkpoints and ``config.json`` hold ``dataclasses.asdict(config)``;
:meth:`RunConfig.from_dict` reads it back and names any missing or unknown field (an old
or foreign checkpoint).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from das.cell import SEARCH_SPACES, Genotype, resolve_ops
from das.data import DataError, detect_format
from das.dra_ops import OP_GROUPS, resolve_dra_ops
from das.models import FUSIONS, gsf_problem
from das.variants import NEEDS_GENOTYPE, SEG_VARIANTS, VARIANTS, VIDEO_VARIANTS

__all__ = [
    "CellConfig",
    "ConfigError",
    "DRAConfig",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "RunConfig",
    "RuntimeConfig",
    "SearchConfig",
    "TaskConfig",
    "TrainConfig",
    "check",
    "check_eval",
    "comma_list",
]


class ConfigError(ValueError):
    """A setting that cannot work; the message names the option (or the config field)."""


@dataclass(frozen=True)
class DataConfig:
    data: str
    data_format: str
    image_size: int | None
    val_fraction: float
    limit_train: int | None
    limit_val: int | None
    crop_pad: int | None
    flip: str  # auto | on | off
    cutout: int


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    width_mult: float
    fusion: str
    gsf_ratio: int
    frames: int | None  # train: None = the genotype's T (else 4)
    step_mode: str


@dataclass(frozen=True)
class CellConfig:
    nodes: int
    ops: str
    learn_magnitudes: bool
    magnitudes: str  # fixed | gaussian (per-sample N(mu, sigma^2), learned with tau)


@dataclass(frozen=True)
class SearchConfig:
    epochs: int
    steps_per_epoch: int | None
    batch_size: int
    order: int
    warmup_epochs: int
    w_lr: float
    w_lr_min: float
    w_momentum: float
    w_wd: float
    grad_clip: float
    a_lr: float
    a_beta1: float
    a_beta2: float
    a_wd: float
    eval_every: int
    eval_images: int
    select: str
    select_order: str
    finetune_epochs: float
    finetune_lr: float
    rf: bool  # receptive fields of the searched backbone in the report (das.rf_report)
    # fields added later have defaults: configurations saved before them still load
    select_images: int = 0  # images selection scores on (0: the arch half, at most 10,000)
    seeds: str | None = None  # --seeds: one search per seed + consensus (das.consensus)


@dataclass(frozen=True)
class TrainConfig:
    genotype: str | None
    variant: str
    ablation: bool
    variants: str
    fusions: str | None
    seeds: str | None
    jobs: int
    epochs: int
    max_steps: int | None
    batch_size: int
    lr: float
    lr_min: float
    momentum: float
    wd: float
    grad_clip: float
    eval_every: int
    eval_only: bool
    checkpoint: str | None
    rf: bool  # receptive fields of the trained run(s) (das.rf_report)
    policy: str | None  # image-to-image augmentation of the 2D baseline (das.policy)
    policies: str | None  # --ablation over policies instead of variants


@dataclass(frozen=True)
class TaskConfig:
    """``--task``: classification (default) or segmentation, and the segmentation settings
    (ignored by classification): head, output stride, training crop ``"H,W"`` (None: the
    data's size), how frames are averaged when un-warped, the auxiliary loss weight."""

    task: str  # classification | segmentation
    head: str
    output_stride: int
    crop: str | None
    unwarp_average: str
    aux_weight: float

    @property
    def segmentation(self) -> bool:
        return self.task == "segmentation"

    @property
    def crop_size(self) -> tuple[int, int] | None:
        if self.crop is None:
            return None
        h, w = (int(v) for v in self.crop.split(","))
        return h, w


@dataclass(frozen=True)
class DRAConfig:
    """``--method``: das (the DAS cell search, default) or dra (Differentiable RandAugment,
    :mod:`das.dra_search`), and DRA's settings (ignored by das): policy layers, operator
    ranges, Gumbel temperature, KL weight, the policy's AdamW learning rate, the proxy
    size (training images searched on, half for the weights, half for the policy) and the
    operators (``--dra-ops``)."""

    method: str  # das | dra
    dra_layers: int
    dra_space: str  # cifar | imagenet (das.dra_ops.SPACES)
    dra_temperature: float
    dra_kl_weight: float
    dra_lr: float
    proxy_images: int
    dra_ops: str  # all | affine | colour | a comma list (das.dra_ops.resolve_dra_ops)

    @property
    def dra(self) -> bool:
        return self.method == "dra"


@dataclass(frozen=True)
class RuntimeConfig:
    out: str
    seed: int
    device: str
    amp: bool
    ops_backend: str
    memory: str  # normal | lean (das.models.memory): the same numbers, less memory
    workers: int  # DataLoader worker processes reading batches (the same batches)
    threads: int | None
    deterministic: bool
    no_progress: bool
    resume: bool

    # taken from the command line, not the checkpoint, when a run resumes
    FROM_COMMAND_LINE: ClassVar[tuple[str, ...]] = (
        "out",
        "device",
        "no_progress",
        "threads",
        "ops_backend",
        "memory",
        "workers",
        "resume",
    )


@dataclass(frozen=True)
class EvalConfig:
    """``python -m das.evaluate``: the run itself comes from the checkpoint's RunConfig."""

    checkpoint: str
    data: str | None
    device: str
    batch_size: int
    ops_backend: str
    split: str = "val"


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "runtime": RuntimeConfig,
    "cell": CellConfig,
    "search": SearchConfig,
    "train": TrainConfig,
    "task": TaskConfig,
    "dra": DRAConfig,
}
COMMAND_SECTIONS: dict[str, tuple[str, ...]] = {
    "search": ("data", "model", "runtime", "cell", "search", "task", "dra"),
    "train": ("data", "model", "runtime", "train", "task"),
}
# sections a configuration written before they existed may lack (filled with the defaults)
OPTIONAL_SECTIONS = ("task", "dra")


@dataclass(frozen=True)
class RunConfig:
    """Everything a search or training run was configured with."""

    command: str  # search | train
    data: DataConfig
    model: ModelConfig
    runtime: RuntimeConfig
    cell: CellConfig | None = None
    search: SearchConfig | None = None
    train: TrainConfig | None = None
    task: TaskConfig | None = None
    dra: DRAConfig | None = None  # search only: --method and DRA's settings

    @property
    def method(self) -> str:
        """The search method: das, or dra (``--method dra``)."""
        return "dra" if self.dra is not None and self.dra.dra else "das"

    @property
    def segmentation(self) -> bool:
        """``--task segmentation``."""
        return self.task is not None and self.task.segmentation

    @property
    def out(self) -> Path:
        return Path(self.runtime.out)

    @property
    def seed(self) -> int:
        return self.runtime.seed

    @property
    def batch_size(self) -> int:
        return self.job.batch_size

    @property
    def job(self) -> SearchConfig | TrainConfig:
        """The command's own section (search or train)."""
        job = self.search if self.command == "search" else self.train
        assert job is not None
        return job

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_namespace(cls, command: str, args: argparse.Namespace) -> RunConfig:
        """From the parsed command line (every field is an option's ``dest``)."""
        values = vars(args)
        sections = {
            name: _SECTIONS[name](**{f.name: values[f.name] for f in fields(_SECTIONS[name])})
            for name in COMMAND_SECTIONS[command]
        }
        return cls(command=command, **sections)

    @classmethod
    def from_dict(cls, d: Any, where: str = "config") -> RunConfig:
        """The inverse of :meth:`to_dict`; ConfigError naming every missing or unknown field
        (a configuration written by an older das, or not by das)."""
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: not a das run configuration (a {type(d).__name__})")
        command = d.get("command")
        if command not in COMMAND_SECTIONS:
            what = "missing field 'command'" if command is None else f"unknown command {command!r}"
            unknown = [k for k in d if k != "command" and k not in _SECTIONS]
            raise ConfigError(
                f"{where}: {what}{_unknown(unknown)} (not a RunConfig: written by an older das, "
                "or not by das)"
            )
        wanted = COMMAND_SECTIONS[command]
        missing = [n for n in OPTIONAL_SECTIONS if n in wanted and n not in d]
        if missing:  # written before the section existed: its defaults (classification)
            d = {**d, **_default_sections(command, missing)}
        for name, section in _later_fields(d, command, wanted).items():
            d = {**d, name: section}  # an optional section's fields added later: defaults
        problems = [f"unknown field {k!r}" for k in d if k != "command" and k not in _SECTIONS]
        problems += [
            f"unknown field {k!r} for a {command} run"
            for k in _SECTIONS
            if k not in wanted and d.get(k) is not None
        ]
        for name in wanted:
            section = d.get(name)
            if not isinstance(section, dict):
                problems.append(f"missing field {name!r}")
                continue
            names = [f.name for f in fields(_SECTIONS[name])]
            problems += [
                f"missing field '{name}.{f.name}'"
                for f in fields(_SECTIONS[name])
                if f.name not in section and f.default is MISSING
            ]
            problems += [f"unknown field '{name}.{k}'" for k in section if k not in names]
        if problems:
            raise ConfigError(f"{where}: " + "; ".join(problems))
        return cls(command=command, **{n: _SECTIONS[n](**d[n]) for n in wanted})

    def resumed_by(self, runtime: RuntimeConfig) -> RunConfig:
        """This (saved) config with the command line's FROM_COMMAND_LINE runtime settings."""
        new = {k: getattr(runtime, k) for k in RuntimeConfig.FROM_COMMAND_LINE}
        return replace(self, runtime=replace(self.runtime, **new))

    def with_run(self, **changes: Any) -> RunConfig:
        """A copy with fields changed by name in whichever section holds them
        (``with_run(seed=1, fusion="tsm")``)."""
        sections: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            owner = [n for n in COMMAND_SECTIONS[self.command] if _has_field(_SECTIONS[n], key)]
            if not owner:
                raise TypeError(f"no field {key!r} in a {self.command} configuration")
            sections.setdefault(owner[0], {})[key] = value
        return replace(self, **{n: replace(getattr(self, n), **kv) for n, kv in sections.items()})


def _default_sections(command: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """The command line's defaults of sections `names` (as dicts)."""
    from das.cli import build_parser  # the defaults live there

    values = vars(build_parser(command).parse_args([]))
    return {n: {f.name: values[f.name] for f in fields(_SECTIONS[n])} for n in names}


def _later_fields(d: dict[str, Any], command: str, wanted: tuple[str, ...]) -> dict[str, Any]:
    """The optional sections of `d` that lack fields (added to the section after `d` was
    written, e.g. ``dra.dra_ops``), completed with the command line's defaults."""
    short = [
        n
        for n in OPTIONAL_SECTIONS
        if n in wanted
        and isinstance(d.get(n), dict)
        and any(f.name not in d[n] for f in fields(_SECTIONS[n]))
    ]
    if not short:
        return {}
    defaults = _default_sections(command, short)
    return {n: {**defaults[n], **d[n]} for n in short}


def _unknown(names: list[str], show: int = 6) -> str:
    if not names:
        return ""
    listed = ", ".join(repr(n) for n in names[:show])
    more = f" and {len(names) - show} more" if len(names) > show else ""
    return f"; unknown field{'s' if len(names) > 1 else ''} {listed}{more}"


def _has_field(cls: type, name: str) -> bool:
    return any(f.name == name for f in fields(cls))


def comma_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def option(field: str) -> str:
    return "--" + field.replace("_", "-")


# ----------------------------------------------------------------------------- checks


def check(cfg: RunConfig) -> None:
    """Every check that needs more than one option, the file system or the machine;
    ConfigError (exit status 2 at the command line) naming the option."""
    if cfg.command == "train" and cfg.train is not None and cfg.train.eval_only:
        _check_eval_only(cfg)
        return
    _check_runtime(cfg.runtime)
    if cfg.segmentation:
        _check_seg_data(cfg.data)
    else:
        _check_data(cfg.data)
    if cfg.command == "search":
        _check_search(cfg)
    else:
        _check_train(cfg)


def _check_runtime(rt: RuntimeConfig) -> None:
    if os.path.exists(rt.out) and not os.path.isdir(rt.out):
        raise ConfigError(f"--out: {rt.out} exists and is not a directory")
    cuda = torch.cuda.is_available()
    if rt.amp and (rt.device == "cpu" or (rt.device == "auto" and not cuda)):
        raise ConfigError("--amp needs CUDA (bfloat16 autocast); drop --amp or use --device cuda")
    if rt.device == "cuda" and not cuda:
        raise ConfigError("--device cuda: CUDA is not available on this machine")


def _check_data(data: DataConfig) -> None:
    from das.segdata import detect_seg_format

    try:
        detect_seg_format(data.data)
    except DataError:
        pass
    else:
        raise ConfigError(
            f"--data {data.data} is a segmentation dataset; use --task segmentation "
            "(the default task is classification)"
        )
    try:
        if data.data_format == "auto":
            detect_format(data.data)
        elif data.data_format != "digits" and not os.path.exists(os.path.expanduser(data.data)):
            raise DataError(f"data path not found: {data.data}")
    except DataError as exc:
        raise ConfigError(f"--data: {exc}") from None


def _check_seg_data(data: DataConfig) -> None:
    """``--task segmentation``: --data must be a segmentation layout (CamVid, VOC, Cityscapes)."""
    from das.segdata import detect_seg_format

    if data.data_format != "auto":
        raise ConfigError(
            f"--data-format {data.data_format}: classification formats do not apply to "
            "--task segmentation (its layout is detected: camvid, voc or cityscapes)"
        )
    try:
        detect_seg_format(data.data)
    except DataError as exc:
        raise ConfigError(
            f"--data: --task segmentation needs a segmentation folder: {exc}"
        ) from None


def _check_gsf(model: ModelConfig, fusions: list[str]) -> None:
    """GSF gates a channel count divisible by 4 in every stage of the chosen arch."""
    if "gsf" not in fusions:
        return
    problem = gsf_problem(model.arch, model.width_mult, model.gsf_ratio)
    if problem is not None:
        raise ConfigError(
            f"--width-mult {model.width_mult:g} / --gsf-ratio {model.gsf_ratio}: {problem}; "
            "choose another --width-mult or --gsf-ratio (or another --fusion)"
        )


def _check_rf(cfg: RunConfig) -> None:
    if cfg.job.rf and cfg.segmentation:
        raise ConfigError(
            "--rf: receptive fields are measured for classification runs only (for a "
            "segmentation network the unit would be a logit; not built yet)"
        )


def _check_policy(cfg: RunConfig) -> None:
    """``--policy`` / ``--policies``: parsed (files read) and only for the 2D baseline."""
    from das.policy import parse_policy, parse_policy_list

    t = cfg.train
    assert t is not None
    if t.policy is None and t.policies is None:
        return
    if cfg.segmentation:
        raise ConfigError("--policy/--policies: image-to-image policies are classification only")
    try:
        if t.policy is not None:
            parse_policy(t.policy)
        if t.policies is not None:
            parse_policy_list(t.policies)
    except ValueError as exc:
        name = "--policy" if t.policy is not None else "--policies"
        raise ConfigError(f"{name}: {exc}") from None
    if t.policies is not None and not t.ablation:
        raise ConfigError("--policies is an option of --ablation (one run: --policy)")
    if t.policy is not None and t.ablation:
        raise ConfigError("--ablation compares policies with --policies, not --policy")
    if t.policy is not None and t.variant != "baseline":
        raise ConfigError(
            f"--policy augments the 2D baseline network; it cannot train --variant {t.variant}"
        )
    if t.policies is not None:
        _check_seeds(t.seeds)


def _check_search(cfg: RunConfig) -> None:
    assert cfg.cell is not None and cfg.search is not None
    if cfg.method == "dra":
        _check_dra(cfg)
        return
    _check_rf(cfg)
    if cfg.cell.magnitudes == "gaussian" and cfg.segmentation:
        raise ConfigError(
            "--magnitudes gaussian: classification only (the un-warp would need each "
            "sample's own paths)"
        )
    try:
        resolve_ops(cfg.cell.ops)
    except ValueError as exc:
        raise ConfigError(f"--ops: {exc} (search spaces: {', '.join(SEARCH_SPACES)})") from None
    s = cfg.search
    _check_seeds(s.seeds)
    if s.warmup_epochs >= s.epochs:
        raise ConfigError(f"--warmup-epochs ({s.warmup_epochs}) must be < --epochs ({s.epochs})")
    _check_gsf(cfg.model, [cfg.model.fusion])


def _check_seeds(text: str | None) -> None:
    """``--seeds``: a comma list of distinct non-negative integers (or not given)."""
    if text is None:
        return
    seeds = comma_list(text)
    if not seeds or not all(s.isdigit() for s in seeds) or len(set(seeds)) < len(seeds):
        raise ConfigError(f"--seeds: expected distinct non-negative integers: {text!r}")


def _check_dra(cfg: RunConfig) -> None:
    """``--method dra``: classification, first order, a proxy with images for both halves."""
    assert cfg.dra is not None and cfg.search is not None
    if cfg.segmentation:
        raise ConfigError("--method dra: classification only (drop --task segmentation)")
    if cfg.search.rf:
        raise ConfigError("--rf: receptive fields of a DAS cell; not with --method dra")
    if cfg.search.order != 1:
        raise ConfigError("--order 2: DRA's policy step is first order; drop --order")
    if cfg.dra.proxy_images < 4:
        raise ConfigError(f"--proxy-images {cfg.dra.proxy_images}: need at least 4 images")
    try:
        resolve_dra_ops(cfg.dra.dra_ops)
    except ValueError as exc:
        groups = ", ".join(OP_GROUPS)
        raise ConfigError(f"--dra-ops {cfg.dra.dra_ops!r}: {exc} (or a group: {groups})") from None


def _check_train(cfg: RunConfig) -> None:
    t = cfg.train
    assert t is not None
    _check_rf(cfg)
    _check_policy(cfg)
    if t.policies is not None:
        return
    if t.genotype not in (None, "random"):
        try:
            Genotype.load(t.genotype)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"--genotype: {exc}") from None
    allowed = SEG_VARIANTS if cfg.segmentation else VARIANTS
    if not t.ablation and t.variant not in allowed:
        raise ConfigError(
            f"--variant {t.variant} is a --task segmentation variant; choose from "
            f"{', '.join(allowed)}"
        )
    if t.ablation:
        variants = comma_list(t.variants)
        bad = [v for v in variants if v not in allowed]
        if bad or not variants:
            raise ConfigError(f"--variants: unknown {bad}; choose from {', '.join(allowed)}")
        fusions = comma_list(t.fusions or cfg.model.fusion)
        for f in fusions:
            if f not in FUSIONS:
                raise ConfigError(
                    f"--fusions: unknown fusion {f!r}; choose from {', '.join(FUSIONS)}"
                )
        if any(v in NEEDS_GENOTYPE for v in variants) and t.genotype is None:
            raise ConfigError(
                "--ablation with das/augment/shuffle/das-nounwarp needs --genotype "
                "(a genotype.json or 'random')"
            )
        _check_seeds(t.seeds)
        if t.jobs > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("--jobs runs several processes itself; under torchrun use --jobs 1")
        _check_gsf(cfg.model, fusions if any(v in VIDEO_VARIANTS for v in variants) else [])
        return
    if t.seeds is not None or t.jobs > 1:
        raise ConfigError("--seeds and --jobs are options of --ablation")
    if t.variant in NEEDS_GENOTYPE and t.genotype is None:
        saved = [cfg.out / "checkpoint.pt", cfg.out / "checkpoint.prev.pt"]
        resumable = cfg.runtime.resume and any(p.is_file() for p in saved)
        if not resumable:
            raise ConfigError(
                f"--variant {t.variant} needs --genotype (a genotype.json from "
                "das.search, or 'random')"
            )
    _check_gsf(cfg.model, [cfg.model.fusion] if t.variant in VIDEO_VARIANTS else [])


def _check_eval_only(cfg: RunConfig) -> None:
    assert cfg.train is not None
    path = Path(cfg.train.checkpoint or cfg.out / "checkpoint.pt")
    if not path.is_file():
        raise ConfigError(f"--eval-only: checkpoint not found: {path}")


def check_eval(cfg: EvalConfig) -> None:
    if not Path(cfg.checkpoint).is_file():
        raise ConfigError(f"checkpoint not found: {cfg.checkpoint}")
