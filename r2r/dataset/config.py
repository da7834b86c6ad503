"""The settings of a ``make-dataset`` run, their checks, and the typed records handed to workers.

* :class:`MakeConfig`: what the user asks for (the CLI builds one; the Python API takes one).
* :func:`validate_config`: every number, choice and path of a :class:`MakeConfig`, checked
  before anything is read or written.
* :class:`FilterSettings`, :class:`WorkerSettings`, :class:`WorkUnit`: frozen, picklable
  records that worker processes receive (no untyped dicts read back by string keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..blending.diagnostics import check_filter
from ..errors import R2RUserError
from ..fileio import check_name_length
from .layouts import check_folder
from .writer import check_subset_name

DEFAULT_GENERATOR = "r2r.blending:random_poisson_blend"
MASK_TYPES = ("binary", "labels")
REFERENCES = ("self", "other")
IMAGE_FORMATS = ("jpg", "png")
#: seeds are stored in JSON and hashed; any whole number in this range is accepted
SEED_MAX = 2**63 - 1


@dataclass(frozen=True)
class FilterSettings:
    """Which composites are kept (thresholds of :func:`r2r.blending.filter_rejection`): fMSE on the
    0..255 scale (as the evaluation computes it) and the CIE76 Delta E between the foreground's mean
    colour in composite and real image."""

    min_fmse: float | None = None
    max_fmse: float | None = None
    min_color_shift_lab: float | None = None
    max_tries: int = 5

    def to_json(self) -> dict:
        return {"min_fmse": self.min_fmse, "max_fmse": self.max_fmse,
                "min_color_shift_lab": self.min_color_shift_lab, "max_tries": self.max_tries}


@dataclass(frozen=True)
class MakeConfig:
    """Settings of a make-dataset run (everything that changes the output is in ``params()``)."""

    out: Path
    images: Path | None = None
    masks: Path | None = None
    subset: str = "R-Custom"
    per_image: int = 1
    seed: int = 0
    alpha: tuple[float, float] | None = None  # None: the generator's default
    test_fraction: float = 0.1
    min_fmse: float | None = None
    max_fmse: float | None = None
    min_color_shift_lab: float | None = None
    max_tries: int = 5
    max_side: int | None = None
    image_format: str = "jpg"
    jpeg_quality: int = 100
    mask_type: str = "binary"  # "binary" or "labels"
    masks_per_image: int = 1  # label maps: how many regions per image
    label_min_area: float = 0.01
    label_max_area: float = 0.8
    name_prefix: str = "auto"
    reference: str = "self"  # "self": another region of the same image; "other": another source image
    workers: int = 1
    shard: tuple[int, int] = (0, 1)
    keep_going: bool = True
    progress: bool = True
    generator: object = DEFAULT_GENERATOR  # "module:function" or a picklable callable
    generator_kwargs: dict = field(default_factory=dict)

    def resolved_prefix(self) -> str:
        if self.name_prefix != "auto":
            return self.name_prefix
        low = self.subset.lower()
        # the official evaluation assigns names starting with "rd" to R-DUTS and other "r..." to R-ADE20K
        if "duts" in low:
            return "rd-"
        if "ade" in low:
            return "r-"
        return ""

    def generator_spec(self) -> str:
        g = self.generator
        if isinstance(g, str):
            return g
        return f"{getattr(g, '__module__', '?')}:{getattr(g, '__qualname__', repr(g))}"

    def filter(self) -> FilterSettings:
        return FilterSettings(self.min_fmse, self.max_fmse, self.min_color_shift_lab, self.max_tries)

    def params(self) -> dict:
        """The settings that determine the output files (a resume must use the same)."""
        return {
            "subset": self.subset,
            "per_image": self.per_image,
            "seed": self.seed,
            "alpha": list(self.alpha) if self.alpha is not None else None,
            "test_fraction": self.test_fraction,
            "filter": self.filter().to_json(),
            "max_side": self.max_side,
            "image_format": self.image_format,
            "jpeg_quality": self.jpeg_quality,
            "mask_type": self.mask_type,
            "masks_per_image": self.masks_per_image,
            "label_min_area": self.label_min_area,
            "label_max_area": self.label_max_area,
            "name_prefix": self.resolved_prefix(),
            "reference": self.reference,
            "generator": self.generator_spec(),
            "generator_kwargs": jsonable(self.generator_kwargs),
        }


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs to make the composites of one source image (built once per run)."""

    out: str
    subset: str
    seed: int
    per_image: int
    alpha: tuple[float, float] | None
    filter: FilterSettings
    max_side: int | None
    image_format: str
    jpeg_quality: int
    mask_type: str
    masks_per_image: int
    label_min_area: float
    label_max_area: float
    generator: object  # "module:function" or a picklable callable
    generator_kwargs: tuple[tuple[str, object], ...]

    @classmethod
    def from_config(cls, cfg: MakeConfig, out: Path) -> WorkerSettings:
        return cls(
            out=str(out), subset=cfg.subset, seed=int(cfg.seed), per_image=int(cfg.per_image),
            alpha=(float(cfg.alpha[0]), float(cfg.alpha[1])) if cfg.alpha is not None else None, filter=cfg.filter(),
            max_side=cfg.max_side, image_format=cfg.image_format, jpeg_quality=int(cfg.jpeg_quality),
            mask_type=cfg.mask_type, masks_per_image=int(cfg.masks_per_image),
            label_min_area=float(cfg.label_min_area), label_max_area=float(cfg.label_max_area),
            generator=cfg.generator, generator_kwargs=tuple(sorted(cfg.generator_kwargs.items())),
        )

    def generator_call_kwargs(self) -> dict:
        """Keyword arguments of every generator call (``--gen-arg`` values plus ``alpha``)."""
        kwargs = dict(self.generator_kwargs)
        if self.alpha is not None:
            kwargs["alpha"] = tuple(self.alpha)
        return kwargs


@dataclass(frozen=True)
class WorkUnit:
    """One source image to turn into composites."""

    key: str  # image path relative to the image folder (determines names, seeds, split)
    name: str  # output name (<name>.jpg, <name>_<k>.png, <name>_<k>_<j>.jpg)
    image: str
    masks: tuple[tuple[int, str], ...]  # (k, mask path)
    split: str
    problem: str | None = None  # set when the item cannot be used (reported, not fatal)
    references: tuple[tuple[int, str], ...] = ()  # composite index j -> another source image


def jsonable(obj):
    """``obj`` with numpy values, tuples and non-finite floats turned into plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist()) if obj.size <= 16 else f"<array {tuple(obj.shape)}>"
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return repr(obj)


# ----------------------------------------------------------------------------- checks


def _is_whole(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or below it."""
    return a == b or b in a.parents


def validate_config(cfg: MakeConfig) -> None:
    """Every setting of ``cfg`` (numbers, choices, source and output paths); R2RUserError with the
    fix. Reads nothing but the folders' existence and permissions, writes nothing."""

    def bad(msg):
        raise R2RUserError(msg)

    if not _is_whole(cfg.seed) or not 0 <= cfg.seed <= SEED_MAX:
        bad(f"--seed must be a whole number in 0..{SEED_MAX}, got {cfg.seed!r}")
    for name, value, low in (("--per-image", cfg.per_image, 1), ("--max-tries", cfg.max_tries, 1),
                             ("--masks-per-image", cfg.masks_per_image, 1), ("--workers", cfg.workers, 0)):
        if not _is_whole(value) or value < low:
            bad(f"{name} must be a whole number >= {low}, got {value!r}")
    if cfg.alpha is not None:
        try:
            lo, hi = (float(v) for v in cfg.alpha)
        except (TypeError, ValueError):
            bad(f"--alpha takes two numbers LO HI, got {cfg.alpha!r}")
        if not (0.0 <= lo <= hi <= 1.0):
            bad(f"--alpha LO HI must satisfy 0 <= LO <= HI <= 1, got {lo} {hi}")
    if not 0.0 <= cfg.test_fraction <= 1.0:
        bad(f"--test-fraction must be in [0, 1], got {cfg.test_fraction}")
    try:
        i, n = cfg.shard
    except (TypeError, ValueError):
        bad(f"--shard takes i/n such as 0/4, got {cfg.shard!r}")
    if not (_is_whole(i) and _is_whole(n)) or n < 1 or not 0 <= i < n:
        bad(f"--shard i/n needs 0 <= i < n, got {i}/{n}; e.g. --shard 0/4 ... --shard 3/4")
    if cfg.mask_type not in MASK_TYPES:
        bad(f"--mask-type must be 'binary' or 'labels', got {cfg.mask_type!r}")
    if cfg.image_format not in IMAGE_FORMATS:
        bad(f"--format must be 'jpg' or 'png', got {cfg.image_format!r}")
    if not _is_whole(cfg.jpeg_quality) or not 1 <= cfg.jpeg_quality <= 100:
        bad(f"--jpeg-quality must be a whole number in 1..100, got {cfg.jpeg_quality!r}")
    if cfg.max_side is not None and (not _is_whole(cfg.max_side) or cfg.max_side < 64):
        bad(f"--max-side must be a whole number >= 64, got {cfg.max_side!r}")
    try:
        check_filter(cfg.min_fmse, cfg.max_fmse, cfg.min_color_shift_lab)
    except R2RUserError as exc:
        bad(f"filter (--min-fmse / --max-fmse / --min-color-shift-lab): {exc}")
    if not 0.0 <= cfg.label_min_area <= cfg.label_max_area <= 1.0:
        bad(f"--label-min-area/--label-max-area need 0 <= min <= max <= 1, got {cfg.label_min_area} "
            f"{cfg.label_max_area}")
    if cfg.reference not in REFERENCES:
        bad(f"--reference must be 'self' or 'other', got {cfg.reference!r}")
    if not isinstance(cfg.generator_kwargs, dict) or not all(isinstance(k, str) for k in cfg.generator_kwargs):
        bad(f"generator_kwargs must be a dict with string keys (--gen-arg KEY=VALUE), got {cfg.generator_kwargs!r}")
    reserved = {"seed", "reference"} & set(cfg.generator_kwargs)
    if reserved:
        bad(f"--gen-arg {sorted(reserved)[0]}=... is set by make-dataset itself (seed: --seed; reference: "
            "--reference); remove it")
    if cfg.alpha is not None and "alpha" in cfg.generator_kwargs:
        bad("alpha is given twice (--alpha and --gen-arg alpha=...); keep one")
    if cfg.images is None or cfg.masks is None:
        bad("pass the source folders with --images DIR --masks DIR (or --source DIR with a known layout)")
    images = check_folder(cfg.images, "--images", "pass the folder of real images with --images").resolve()
    masks = check_folder(cfg.masks, "--masks", "pass the folder of masks with --masks").resolve()
    if not str(cfg.out).strip():
        bad("--out is empty; pass the dataset folder to write")
    check_name_length(Path(cfg.out) / "x", "output folder (--out)")
    out = Path(cfg.out).resolve()
    if out.exists() and not out.is_dir():
        bad(f"--out {cfg.out} is a file, not a folder; pass a folder (it is created if missing)")
    for d in (images, masks):
        if _inside(out, d):
            bad(f"--out {cfg.out} is inside the source folder {d}; the generated images would be read as sources "
                "on the next run. Choose an output folder outside it")
        if _inside(d, out / cfg.subset):
            bad(f"the source folder {d} is inside the subset folder {out / cfg.subset} that make-dataset writes; "
                "its files could be overwritten. Choose another --out or --subset")
    check_subset_name(cfg.subset)
    check_name_length(Path(cfg.out) / f"manifest-{cfg.subset}.json", "--subset name")
