"""Training data: dataset sources, the reference augmentations and a resumable, sharded sampler.

Sources (``data.train`` / ``data.val`` entries):

* ``layout``: iHarmony4 / RPHarmony (``<split>.jsonl`` or ``<split>.txt`` list files), read with
  :mod:`r2r.dataset.layouts`; composites come from the dataset.
* ``folder``: a folder of real images plus a folder of masks; the composite is made on the fly with
  Random Poisson Blending (:func:`r2r.blending.random_poisson_blend`), different every epoch.

Mixtures are lists of sources (each with ``repeat``). Augmentations follow ref §f.3: horizontal flip
(p = 0.5); the 7-channel hint pre-image computed on the full (flipped) composite; a random-resized
crop (scale 0.5-1, ratio 3/4-4/3) retried up to 5 times until it holds >= 1 % foreground (the last
box is kept otherwise); everything resized to the training resolution (bilinear with antialiasing;
the mask nearest).

Every random choice is seeded by ``(seed, epoch, index)``, so the data seen at a given step does not
depend on workers or processes, and a resumed run sees exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from r2r.errors import R2RUserError


@dataclass(frozen=True)
class Record:
    """One training item: ``composite`` is None for folder sources (made with RPB); ``problem`` says why
    an item found while listing cannot be used (e.g. an image without a mask), reported by the data check."""

    real: str
    mask: str
    composite: str | None
    name: str
    problem: str | None = None


# ---------------------------------------------------------------------------- listing
def _layout_records(root: str, split: str) -> list[Record]:
    from r2r.dataset.layouts import read_split

    return [
        Record(real=str(it.real), mask=str(it.mask), composite=str(it.composite), name=it.file_name)
        for it in read_split(root, split, check_files=False)  # missing files: reported by the data check
    ]


def _folder_records(root: str, masks: str | None) -> list[Record]:
    from r2r.dataset.layouts import find_sources

    mask_dir = masks or os.path.join(root, "masks")
    if not os.path.isdir(mask_dir):
        raise R2RUserError(
            f"mask folder {mask_dir!r} does not exist: a 'folder' source needs a mask per image "
            "(same file stem, white = foreground). Set masks: <folder> in the source."
        )
    items = find_sources(root, mask_dir)
    records = []
    for it in items:
        if it.problem:
            records.append(Record(real=str(it.image), mask="", composite=None, name=it.key, problem=it.problem))
            continue
        for m in it.masks:
            records.append(Record(real=str(it.image), mask=str(m.path), composite=None, name=f"{it.key}_{m.k}"))
    if not any(r.problem is None for r in records):
        problems = [it.problem for it in items if it.problem][:3]
        raise R2RUserError(
            f"no image/mask pairs found in {root!r} with masks in {mask_dir!r} "
            f"(masks must share the image's file stem, e.g. cat.jpg + masks/cat.png): {problems}"
        )
    return records


def list_records(src) -> list[Record]:
    """The items of one :class:`training.config.SourceConfig`."""
    if src.type == "layout":
        records = _layout_records(src.root, src.split)
    else:
        records = _folder_records(src.root, src.masks)
    if src.limit:
        records = records[: src.limit]
    if not records:
        raise R2RUserError(f"data source {src.type}:{src.root} (split {src.split!r}) holds no items")
    return records


# ---------------------------------------------------------------------------- image i/o
def read_rgb(path: str) -> np.ndarray:
    from r2r.fileio import read_image

    return read_image(path)


def read_mask(path: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Boolean ``HxW`` mask (>= 128 is foreground); resized nearest to ``shape`` (H, W) when given."""
    import cv2

    from r2r.fileio import read_mask as read_mask_u8

    m = read_mask_u8(path)
    if shape is not None and m.shape != tuple(shape):
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return m >= 128


def _resize_rgb(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if img.shape[0] == size and img.shape[1] == size:
        return img
    return np.array(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if mask.shape == (size, size):
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) >= 128


# ---------------------------------------------------------------------------- augmentation
def random_resized_crop_box(rng: np.random.Generator, height: int, width: int, scale, ratio):
    """A crop box ``(top, left, h, w)`` drawn like RandomResizedCrop.get_params (10 attempts, then centre)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def choose_crop(rng, mask: np.ndarray, crop_cfg):
    """Retry the crop up to ``tries`` times until it holds >= ``min_foreground`` foreground (ref §f.3)."""
    height, width = mask.shape
    box = (0, 0, height, width)
    for _ in range(max(1, crop_cfg.tries)):
        box = random_resized_crop_box(rng, height, width, crop_cfg.scale, crop_cfg.ratio)
        t, left, h, w = box
        if mask[t : t + h, left : left + w].mean() >= crop_cfg.min_foreground:
            break
    return box


class HarmonizationDataset:
    """Map-style dataset over a mixture of sources; items are addressed as ``(index, epoch)``.

    Returns float32 tensors: ``real``/``composite`` ``[3,r,r]`` in [-1,1], ``mask`` ``[1,r,r]`` in {0,1},
    ``hint`` ``[7,r,r]`` (when ``need_hint``) and ``index``.
    """

    def __init__(self, records: list[Record], *, resolution: int, seed: int, flip: bool = True,
                 crop_cfg=None, need_hint: bool = True, augment: bool = True):
        self.records = records
        self.resolution = resolution
        self.seed = int(seed)
        self.flip = flip
        self.crop_cfg = crop_cfg
        self.need_hint = need_hint
        self.augment = augment

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int, epoch: int = 0) -> dict:
        import torch

        from r2r.imaging.hint import hint_pre_image, uint8_to_pm1

        rec = self.records[index]
        rng = np.random.default_rng([self.seed, int(epoch), int(index), 7])
        real = read_rgb(rec.real)
        mask = read_mask(rec.mask, real.shape[:2])
        if mask.sum() == 0:
            raise R2RUserError(f"mask {rec.mask!r} is empty (no pixel >= 128): every training item needs a foreground")
        if rec.composite is not None:
            comp = read_rgb(rec.composite)
            if comp.shape != real.shape:
                raise R2RUserError(
                    f"composite {rec.composite!r} is {comp.shape[1]}x{comp.shape[0]} but its real image {rec.real!r} "
                    f"is {real.shape[1]}x{real.shape[0]}; they must have the same size"
                )
        else:
            from r2r.blending import random_poisson_blend

            comp = np.asarray(random_poisson_blend(real, mask, np.random.default_rng(rng.integers(2**63))).composite)
            if comp.dtype != np.uint8:
                comp = np.clip(np.asarray(comp, np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if self.augment and self.flip and rng.random() < 0.5:
            real, comp, mask = real[:, ::-1], comp[:, ::-1], mask[:, ::-1]
        real, comp, mask = (np.ascontiguousarray(a) for a in (real, comp, mask))
        pre = hint_pre_image(comp, mask) if self.need_hint else None
        if self.augment and self.crop_cfg is not None:
            t, left, h, w = choose_crop(rng, mask, self.crop_cfg)
            sl = (slice(t, t + h), slice(left, left + w))
            real, comp, mask = real[sl], comp[sl], mask[sl]
            pre = pre[sl] if pre is not None else None
        r = self.resolution
        real, comp = _resize_rgb(np.ascontiguousarray(real), r), _resize_rgb(np.ascontiguousarray(comp), r)
        mask = _resize_mask(np.ascontiguousarray(mask), r)
        out = {
            "real": uint8_to_pm1(real),
            "composite": uint8_to_pm1(comp),
            "mask": torch.from_numpy(mask.astype(np.float32))[None],
            "index": torch.tensor(index),
        }
        if pre is not None:
            pre = _resize_rgb(np.ascontiguousarray(pre), r)
            out["hint"] = torch.cat([uint8_to_pm1(pre), out["composite"], out["mask"]], dim=0)
        return out

    def load_or_substitute(self, index: int, epoch: int = 0) -> dict:
        """:meth:`load`, but an item whose files became unreadable after the data check is replaced by the
        next loadable one (in index order, so the substitute is the same on resume); the replaced items, if
        any, are listed in ``item["skipped"]`` as ``(real image path, problem)`` so the trainer can warn and count."""
        import cv2

        skipped = []
        for k in range(len(self.records)):
            i = (index + k) % len(self.records)
            try:
                item = self.load(i, epoch)
            except (R2RUserError, OSError, ValueError, cv2.error) as exc:
                skipped.append((self.records[i].real, str(exc).splitlines()[0]))
                continue
            if skipped:
                item["skipped"] = skipped
            return item
        raise R2RUserError(f"no training item can be read any more (the last problem: {skipped[-1][1]})")

    def __getitem__(self, key):
        if isinstance(key, tuple):
            item = self.load_or_substitute(key[0], key[1])
            if len(key) > 2:
                import torch

                item["position"] = torch.tensor(key[2])
            return item
        return self.load_or_substitute(key, 0)


def list_sources(sources) -> tuple[list[Record], list[float]]:
    """Records of all sources (mixture) and each record's repeat factor."""
    records, repeats = [], []
    for src in sources:
        recs = list_records(src)
        records.extend(recs)
        repeats.extend([src.repeat] * len(recs))
    return records, repeats


def build_dataset(sources, data_cfg, *, seed: int, need_hint: bool, augment: bool, exclude=frozenset()):
    """Records of all sources minus ``exclude`` (record keys of bad items) -> (dataset, repeats list);
    ``(None, [])`` when every item is excluded."""
    from .scan import record_key

    pairs = [(r, k) for r, k in zip(*list_sources(sources)) if record_key(r) not in exclude]
    if not pairs:
        return None, []
    records, repeats = [r for r, _ in pairs], [k for _, k in pairs]
    ds = HarmonizationDataset(
        records, resolution=data_cfg.resolution, seed=seed, flip=data_cfg.flip,
        crop_cfg=data_cfg.crop if data_cfg.crop_enabled else None, need_hint=need_hint, augment=augment,
    )
    return ds, repeats


class EpochPlan:
    """Deterministic order of items per epoch, sharded over processes and cut into batches.

    Epoch ``e``'s order is a permutation seeded by ``(seed, e)`` of the items repeated per source
    (fractional repeats take a seeded subset). Process ``p`` of ``n`` takes micro-batch ``k`` =
    ``order[(k*n + p)*B : (k*n + p + 1)*B]``; incomplete trailing batches are dropped.
    """

    def __init__(self, repeats: list[float], batch_size: int, seed: int, num_processes: int = 1, process_index: int = 0):
        self.repeats = np.asarray(repeats, dtype=np.float64)
        self.batch_size = batch_size
        self.seed = int(seed)
        self.num_processes = num_processes
        self.process_index = process_index
        expected = int(np.floor(self.repeats).sum() + np.round((self.repeats - np.floor(self.repeats)).sum()))
        self.batches_per_epoch = expected // (batch_size * num_processes)
        if self.batches_per_epoch < 1:
            raise R2RUserError(
                f"the training data has {expected} item(s) per epoch, fewer than one global batch "
                f"(batch_size {batch_size} x {num_processes} process(es)); add data or lower train.batch_size"
            )

    def order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, int(epoch), 11])
        whole = np.floor(self.repeats).astype(np.int64)
        items = np.repeat(np.arange(len(self.repeats)), whole)
        frac = self.repeats - whole
        if frac.sum() > 0:
            k = int(np.round(frac.sum()))
            p = frac / frac.sum()
            extra = rng.choice(len(self.repeats), size=k, replace=False, p=p) if k <= (p > 0).sum() else np.array([], np.int64)
            items = np.concatenate([items, extra])
        return items[rng.permutation(len(items))]

    def batches(self, epoch: int, start: int = 0):
        """Yield ``(batch_in_epoch, [(index, epoch, position), ...])`` for this process from ``start``;
        ``position`` is the item's place in the epoch order (keys its noise, independent of sharding)."""
        order = self.order(epoch)
        n, p, b = self.num_processes, self.process_index, self.batch_size
        for k in range(start, self.batches_per_epoch):
            lo = (k * n + p) * b
            yield k, [(int(i), int(epoch), lo + j) for j, i in enumerate(order[lo : lo + b])]


def collate(items: list[dict]) -> dict:
    """Stack the tensors of ``items``; their ``skipped`` lists are concatenated."""
    import torch

    skipped = [s for it in items for s in it.pop("skipped", [])]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    batch["skipped"] = skipped
    return batch


def _batches_from(plan: EpochPlan, epoch: int, start: int):
    """``(epoch, batch_in_epoch, keys)`` from batch ``start`` of ``epoch`` on, through every later epoch."""
    while True:
        for k, keys in plan.batches(epoch, start):
            yield epoch, k, keys
        epoch, start = epoch + 1, 0


class _BatchKeys:
    """The DataLoader's batch sampler: every batch from (epoch, start) on (the loop stops when training does)."""

    def __init__(self, plan: EpochPlan, epoch: int, start: int):
        self.plan, self.epoch, self.start = plan, epoch, start

    def __iter__(self):
        return (keys for _e, _k, keys in _batches_from(self.plan, self.epoch, self.start))


def iterate_batches(dataset, plan: EpochPlan, epoch: int, start: int, loader_options: dict | int):
    """Yield ``(epoch, batch_in_epoch, batch dict)`` from batch ``start`` of ``epoch`` on, across epochs, with
    one torch DataLoader for the whole run (its workers live across epochs). ``loader_options``: DataLoader
    keyword arguments (:func:`training.speed.data_loader_options`) or just the number of workers."""
    from torch.utils.data import DataLoader

    opts = {"num_workers": loader_options} if isinstance(loader_options, int) else dict(loader_options)
    loader = DataLoader(dataset, batch_sampler=_BatchKeys(plan, epoch, start), collate_fn=collate, **opts)
    for (e, k, _keys), batch in zip(_batches_from(plan, epoch, start), loader):  # the loader keeps the order
        yield e, k, batch
