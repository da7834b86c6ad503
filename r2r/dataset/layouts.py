"""Reading harmonization datasets and the image/mask folders that feed ``make-dataset``.

Two kinds of layouts:

* **Harmonization datasets** (iHarmony4, RPHarmony, and what ``make-dataset`` writes)::

      <root>/<subset>/composite_images/<name>_<k>_<j>.jpg
      <root>/<subset>/masks/<name>_<k>.png
      <root>/<subset>/real_images/<name>.jpg
      <root>/train.jsonl, test.jsonl   lines {"file_name": "<subset>/composite_images/...", "text": ""}
      <root>/train.txt,   test.txt     one "<subset>/composite_images/..." per line

  :func:`read_split` lists the samples of a split (ref §f.1 naming rule).

* **Image + mask sources** for the generator: an image folder and a mask folder matched
  by file stem (``x.jpg`` <-> ``x.png`` / ``x_mask.png`` / ``x_1.png, x_2.png``), which also
  covers DUTS (``DUTS-TR-Image`` / ``DUTS-TR-Mask``), ADE20K scene parsing
  (``images/training`` / ``annotations/training`` label maps) and iHarmony4/RPHarmony
  (``real_images`` / ``masks``). :func:`find_sources` builds the list, :func:`detect_layout`
  recognises those layouts from one root folder.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import R2RUserError
from ..fileio import IMAGE_EXTENSIONS, TEMP_MARKER

IMAGE_EXTS = IMAGE_EXTENSIONS
#: mask-file stem suffixes recognised when matching a mask to its image by stem
MASK_SUFFIXES = ("_mask", "-mask", "_seg", "_gt", "_label", "_alpha", "_matte")

# iHarmony4 subsets by the first letter of the file name (the official per-subset lists)
IHARMONY4_PREFIXES = {"a": "HAdobe5k", "c": "HCOCO", "d": "Hday2night", "f": "HFlickr"}
SPLIT_LIST_NAMES = {"train": ("train", "IHD_train"), "test": ("test", "IHD_test")}


def is_temp_file(path) -> bool:
    return TEMP_MARKER in Path(path).name


def list_images(folder, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (sorted, relative order stable), ignoring temp/hidden files."""
    folder = Path(folder)
    it = folder.rglob("*") if recursive else folder.glob("*")
    out = []
    for p in it:
        if p.suffix.lower() not in IMAGE_EXTS or is_temp_file(p) or p.name.startswith("."):
            continue
        if any(part.startswith(".") for part in p.relative_to(folder).parts[:-1]):
            continue
        if p.is_file():
            out.append(p)
    return sorted(out, key=lambda q: q.relative_to(folder).as_posix())


# ----------------------------------------------------------------------------- naming rule


def split_composite_name(stem: str) -> tuple[str, str, str]:
    """``<name>_<k>_<j>`` -> ``(name, k, j)`` (ref §f.1).

    The official rule re-joins the first two parts when a stem has four underscore parts
    (``c_100_1_2`` -> name ``c_100``); we generalise it to "the last two parts are k and j".
    """
    parts = stem.split("_")
    if len(parts) < 3 or not all(parts):
        raise R2RUserError(
            f"composite file name {stem!r} does not follow the naming rule '<name>_<k>_<j>' "
            "(e.g. 'a0001_1_2.jpg' with mask 'a0001_1.png' and real image 'a0001.jpg'); "
            "rename the file or list it correctly in the split file"
        )
    return "_".join(parts[:-2]), parts[-2], parts[-1]


def subset_from_name(name: str) -> str:
    """Subset of a composite from its file name, as the official evaluation script assigns it:
    RPHarmony names start with ``r`` (``rd...`` = R-DUTS, otherwise R-ADE20K), iHarmony4 names
    with ``a``/``c``/``d``/``f`` (HAdobe5k/HCOCO/Hday2night/HFlickr)."""
    base = Path(name).name
    if base.startswith("rd"):
        return "R-DUTS"
    if base.startswith("r"):
        return "R-ADE20K"
    return IHARMONY4_PREFIXES.get(base[:1], "unknown")


@dataclass(frozen=True)
class HarmonizationSample:
    """One composite of a harmonization dataset with its mask and ground truth."""

    file_name: str  # as listed: "<subset>/composite_images/<name>_<k>_<j>.jpg"
    subset: str
    composite: Path
    mask: Path
    real: Path

    @property
    def stem(self) -> str:
        return Path(self.file_name).stem


def _find_with_any_ext(folder: Path, stem: str, preferred: str) -> Path:
    """``folder/stem.preferred`` or, if absent, the same stem with another image extension."""
    first = folder / f"{stem}{preferred}"
    if first.exists():
        return first
    for ext in IMAGE_EXTS:
        cand = folder / f"{stem}{ext}"
        if cand.exists():
            return cand
    return first  # reported as missing by the caller


def sample_from_file_name(root, file_name: str) -> HarmonizationSample:
    """Resolve a listed composite path (``<subset>/composite_images/<name>_<k>_<j>.jpg``)."""
    root = Path(root)
    rel = Path(file_name.strip().replace("\\", "/"))
    parts = rel.parts
    if len(parts) >= 3 and parts[-2] == "composite_images":
        subset_dir = root.joinpath(*parts[:-2])
        subset = parts[-3]
    elif len(parts) == 2 and parts[0] == "composite_images":
        subset_dir, subset = root, subset_from_name(rel.name)
    elif len(parts) == 1:
        subset = subset_from_name(rel.name)
        subset_dir = root / subset
        rel = Path(subset) / "composite_images" / rel.name
    else:
        raise R2RUserError(
            f"cannot read the listed path {file_name!r}: expected '<subset>/composite_images/"
            "<name>_<k>_<j>.jpg' (the iHarmony4/RPHarmony layout); fix the split file"
        )
    name, k, _ = split_composite_name(rel.stem)
    return HarmonizationSample(
        file_name=rel.as_posix(),
        subset=subset,
        composite=subset_dir / "composite_images" / rel.name,
        mask=_find_with_any_ext(subset_dir / "masks", f"{name}_{k}", ".png"),
        real=_find_with_any_ext(subset_dir / "real_images", name, ".jpg"),
    )


@dataclass
class IndexFile:
    """A parsed split list: ``entries`` = [(file name, the line as written, without its newline)];
    ``remnant`` = an unterminated last line in the jsonl format that does not parse (an append cut
    short by a crash), left out of ``entries``."""

    path: Path
    entries: list[tuple[str, str]]
    remnant: str | None = None


def _listed_name(path: Path, line: str, lineno: int) -> str | None:
    text = line.strip()
    if not text:
        return None
    if path.suffix != ".jsonl":
        return text.split()[0]
    try:
        obj = json.loads(text)
        if not isinstance(obj, dict) or not isinstance(obj.get("file_name"), str) or not obj["file_name"].strip():
            raise TypeError("no file_name")
        return obj["file_name"]
    except (ValueError, TypeError) as exc:
        raise R2RUserError(
            f"{path}: line {lineno} is not a JSON object with a 'file_name' key ({text[:80]!r}); fix or delete "
            "that line"
        ) from exc


def parse_index_file(path) -> IndexFile:
    """The lines of a ``.jsonl`` (``file_name`` key) or ``.txt`` split file; a malformed line is an
    R2RUserError naming the file and the line number."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise R2RUserError(f"{path} is not UTF-8 text (byte {exc.start}); a split list holds one file name (or JSON "
                           "object) per line. Fix or replace the file") from None
    except OSError as exc:
        raise R2RUserError(f"cannot read the split list {path} ({exc.strerror or exc}); check the file") from None
    lines = text.split("\n")
    last = lines.pop()  # "" when the file ends with a newline
    entries = []
    for lineno, line in enumerate(lines, 1):
        name = _listed_name(path, line, lineno)
        if name is not None:
            entries.append((name, line))
    remnant = None
    if last.strip():
        try:
            name = _listed_name(path, last, len(lines) + 1)
        except R2RUserError:
            if not last.lstrip().startswith('{"file_name": '):
                raise
            remnant = last  # our own line format, cut short: a crashed append
        else:
            entries.append((str(name), last))
    return IndexFile(path, entries, remnant)


def read_index_file(path) -> list[str]:
    """File names listed in a ``.jsonl`` (``file_name`` key) or ``.txt`` split file (a crashed append's
    half line is ignored; any other malformed line is an error naming it)."""
    return [name for name, _ in parse_index_file(path).entries]


def find_split_file(root, split: str) -> Path:
    """The list file of ``split``: a split name (``test`` -> ``test.jsonl``/``.txt``/``IHD_test.txt``
    in ``root``) or the path of a ``.jsonl``/``.txt`` list (as given, or relative to ``root``)."""
    root = Path(root)
    cand = Path(split)
    if cand.suffix in (".jsonl", ".txt") or "/" in split or "\\" in split:
        for p in (cand, root / cand):
            if p.is_file():
                return p
            if p.is_dir():
                raise R2RUserError(f"--split {split} is a folder; pass a .jsonl/.txt list file or a split name")
        if cand.suffix not in (".jsonl", ".txt"):
            raise R2RUserError(f"--split {split!r} looks like a path but is not a .jsonl/.txt file; pass a split "
                               "name (test, train) or the path of a .jsonl/.txt list")
        raise R2RUserError(f"the list file {split} does not exist (looked at {cand} and {root / cand}); check "
                           "the path, or pass a split name such as test or train")
    tried = []
    for base in SPLIT_LIST_NAMES.get(split, (split,)):
        for ext in (".jsonl", ".txt"):
            tried.append(root / f"{base}{ext}")
            if tried[-1].is_file():
                return tried[-1]
    raise R2RUserError(
        f"no list of the {split!r} split in {root}: looked for "
        + ", ".join(p.name for p in tried)
        + ". Point --data at the dataset root (the folder with train.jsonl/test.jsonl) or pass "
        "--split as a path to a .jsonl/.txt list"
    )


def check_folder(path, what: str, fix: str) -> Path:
    """``path`` is an existing, readable folder; otherwise an R2RUserError saying which of these
    it is not (``fix`` says what to pass instead)."""
    path = Path(path)
    if not path.exists():
        raise R2RUserError(f"{what} {path} does not exist; {fix}")
    if not path.is_dir():
        raise R2RUserError(f"{what} {path} is a file, not a folder; {fix}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise R2RUserError(f"{what} {path} is not readable (permissions); fix them or copy the folder")
    return path


def read_split(root, split: str = "test", check_files: bool = True) -> list[HarmonizationSample]:
    """Samples of ``split`` (``train``/``test`` or a path to a list file) of a dataset root."""
    root = check_folder(root, "dataset folder", "pass the dataset root (the folder that holds test.jsonl)")
    list_file = find_split_file(root, split)
    samples = [sample_from_file_name(root, fn) for fn in read_index_file(list_file)]
    if not samples:
        raise R2RUserError(f"{list_file} lists no images; nothing to read")
    if check_files:
        missing = [str(p) for s in samples for p in (s.composite, s.mask, s.real) if not p.exists()]
        if missing:
            raise R2RUserError(
                f"{len(missing)} file(s) listed by {list_file} are missing, e.g. "
                + ", ".join(missing[:5])
                + ". Check that --data points at the dataset root and that the download/unzip is complete"
            )
    return samples


# ----------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class SourceMask:
    path: Path
    k: int  # index used in the output names (<name>_<k>.png)


@dataclass
class SourceItem:
    """One source image and its mask file(s)."""

    key: str  # image path relative to the image folder, posix, without extension
    image: Path
    masks: list[SourceMask] = field(default_factory=list)
    problem: str | None = None  # set when the item cannot be used (reported, not fatal)


_NUM_SUFFIX = re.compile(r"^(.*)_(\d+)$")


def _mask_index(mask_dir: Path) -> dict[str, list[tuple[str, Path]]]:
    """relative-dir/stem-base -> [(suffix-number or '', path)]."""
    index: dict[str, list[tuple[str, Path]]] = {}
    for p in list_images(mask_dir):
        rel = p.relative_to(mask_dir).with_suffix("").as_posix()
        index.setdefault(rel, []).append(("", p))
        low = rel.lower()
        for suf in MASK_SUFFIXES:
            if low.endswith(suf):
                index.setdefault(rel[: -len(suf)], []).append(("", p))
        m = _NUM_SUFFIX.match(rel)
        if m:
            index.setdefault(m.group(1), []).append((m.group(2), p))
    return index


def find_sources(images, masks) -> list[SourceItem]:
    """Pair every image under ``images`` with its mask(s) under ``masks`` by relative stem.

    Matching, in order: ``<stem>.<ext>``; ``<stem>_mask`` / ``_seg`` / ``_gt`` ...;
    numbered ``<stem>_<k>`` (several masks per image, iHarmony4 style, ``k`` kept).
    Images without a mask are returned with ``problem`` set (reported per item).
    """
    images, masks = Path(images), Path(masks)
    for what, d, flag in (("image", images, "--images"), ("mask", masks, "--masks")):
        check_folder(d, f"{what} folder", f"pass the folder of {what}s with {flag}")
    image_files = list_images(images)
    if not image_files:
        raise R2RUserError(
            f"no images found in {images} (looked for {', '.join(IMAGE_EXTS)} files, recursively); "
            "pass the folder that holds the real images with --images"
        )
    index = _mask_index(masks)
    if not index:
        raise R2RUserError(f"no mask files found in {masks}; pass the folder that holds the masks with --masks")
    items = []
    for img in image_files:
        key = img.relative_to(images).with_suffix("").as_posix()
        cands = index.get(key, [])
        numbered = sorted((int(n), p) for n, p in cands if n)
        plain = sorted({p for n, p in cands if not n and p != img})
        if plain:
            item_masks = [SourceMask(plain[0], 1)]
        elif numbered:
            item_masks = [SourceMask(p, n) for n, p in numbered]
        else:
            item_masks = []
        item = SourceItem(key=key, image=img, masks=item_masks)
        if not item_masks:
            item.problem = (
                f"no mask found for image {img} (looked in {masks} for {key}.png, {key}_mask.png, "
                f"{key}_1.png ...); add its mask or remove the image"
            )
        items.append(item)
    return items


def detect_layout(root) -> tuple[Path, Path, str]:
    """``(images_dir, masks_dir, mask_type)`` for a known source layout under ``root``.

    Recognises DUTS (``*-Image`` + ``*-Mask``), ADE20K scene parsing (``images/`` +
    ``annotations/`` label maps), iHarmony4/RPHarmony subsets (``real_images/`` + ``masks/``)
    and plain ``images/`` + ``masks/`` folders.
    """
    root = check_folder(root, "source folder", "pass the dataset folder with --source")
    subdirs = {p.name: p for p in root.iterdir() if p.is_dir()}
    img = [n for n in subdirs if n.lower().endswith("-image")]
    msk = [n for n in subdirs if n.lower().endswith("-mask")]
    if len(img) == 1 and len(msk) == 1:
        return subdirs[img[0]], subdirs[msk[0]], "binary"
    if "real_images" in subdirs and "masks" in subdirs:
        return subdirs["real_images"], subdirs["masks"], "binary"
    if "images" in subdirs and "annotations" in subdirs:
        return subdirs["images"], subdirs["annotations"], "labels"
    if "images" in subdirs and "masks" in subdirs:
        return subdirs["images"], subdirs["masks"], "binary"
    raise R2RUserError(
        f"cannot recognise the layout of {root} (sub-folders: {sorted(subdirs) or 'none'}). Expected "
        "DUTS (X-Image/ + X-Mask/), ADE20K (images/ + annotations/), iHarmony4 (real_images/ + masks/) "
        "or images/ + masks/; or pass --images and --masks explicitly"
    )
