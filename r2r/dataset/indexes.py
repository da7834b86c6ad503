"""The split indexes of a harmonization dataset (``train.jsonl`` + ``train.txt``, ``test.jsonl`` +
``test.txt``): read strictly, appended, repaired and rebuilt without ever losing what someone else put
there.

The rules (issue 22):

* a malformed line (not JSON, or no ``file_name``) stops whatever wanted to write, naming the file and
  the line, *before* anything is written (:func:`load_indexes`, :func:`check_indexes`); only an
  unterminated last line in our own format is taken for what it is, an append cut short by a crash,
  and dropped;
* lines are appended in one ``O_APPEND`` write each, jsonl then txt, under the root's lock; if the txt
  append fails (disk full) the jsonl append is cut back too, so the pair never disagrees;
* :func:`repair_indexes` only removes such a crash remnant, appends to a split's txt the names of the
  last jsonl append it lacks (a crash between the two appends) and creates the missing file of a pair;
  it never drops or reorders a line;
* :func:`rebuild_indexes` (the end of ``make-dataset``) merges: every line that is not one of the
  run's own composites stays as written, in its order, with its caption and any other field; the own
  composites follow, sorted, once each (keeping a line someone edited, e.g. a caption added by hand).
  A file is rewritten (atomically) only when its content changes.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from filelock import FileLock

from ..errors import R2RUserError
from ..fileio import append_bytes, atomic_write_text, write_error
from .layouts import IndexFile, parse_index_file, sample_from_file_name

SPLITS = ("train", "test")
EXTS = (".jsonl", ".txt")
LOCK_NAME = ".r2r-index.lock"


@contextlib.contextmanager
def locked(path):
    """An exclusive lock on ``path`` (created if needed) across processes (``filelock``); a lock file
    that cannot be created (read-only or full disk) is an :class:`~r2r.fileio.OutputWriteError`."""
    lock = FileLock(str(path))
    try:
        lock.acquire()
    except OSError as exc:
        err = write_error(exc, path, "lock file")
        if err is exc:
            raise
        raise err from exc
    try:
        yield lock
    finally:
        lock.release()


def index_paths(root) -> list[Path]:
    """Every index file of ``root`` (whether it exists or not)."""
    return [Path(root) / f"{split}{ext}" for split in SPLITS for ext in EXTS]


def index_line_jsonl(file_name: str) -> str:
    return json.dumps({"file_name": file_name, "text": ""}) + "\n"


def _default_line(ext: str, name: str) -> str:
    return index_line_jsonl(name)[:-1] if ext == ".jsonl" else name


def load_indexes(root) -> dict[tuple[str, str], IndexFile | None]:
    """(split, ext) -> the parsed index file (None when absent). A malformed line raises an
    R2RUserError naming the file and the line."""
    root = Path(root)
    out = {}
    for split in SPLITS:
        for ext in EXTS:
            p = root / f"{split}{ext}"
            out[(split, ext)] = parse_index_file(p) if p.is_file() else None
    return out


def check_indexes(root, doing: str = "writing into this dataset") -> None:
    """Every existing index line of ``root`` is readable; otherwise an R2RUserError that says nothing
    was written (call it before the first write)."""
    try:
        load_indexes(root)
    except R2RUserError as exc:
        raise R2RUserError(f"{exc} Stopped before {doing}: nothing was written.") from None


def read_indexes(root) -> dict[str, list[str]]:
    """split -> listed file names (jsonl and txt merged, order of first appearance)."""
    idx = load_indexes(root)
    out = {}
    for split in SPLITS:
        names: dict[str, None] = {}
        for ext in EXTS:
            f = idx[(split, ext)]
            for n, _ in (f.entries if f else []):
                names.setdefault(n, None)
        out[split] = list(names)
    return out


def append_pair(root, file_names, split: str) -> None:
    """Append index lines (jsonl, then txt) for ``file_names``; call with the root's lock held, after the
    files exist. A failed txt append cuts the jsonl append back (the pair never disagrees)."""
    root = Path(root)
    jsonl, txt = root / f"{split}.jsonl", root / f"{split}.txt"
    existed = jsonl.exists()
    size = jsonl.stat().st_size if existed else 0
    append_bytes(jsonl, "".join(index_line_jsonl(n) for n in file_names).encode("utf-8"))
    try:
        append_bytes(txt, "".join(f"{n}\n" for n in file_names).encode("utf-8"))
    except BaseException:
        try:
            if existed:
                os.truncate(jsonl, size)
            else:
                jsonl.unlink()
        except OSError:
            pass
        raise


def append_index(root, file_names, split: str) -> None:
    """Append index lines (jsonl, then txt) under the root's lock; call only after the files exist."""
    if split not in SPLITS:
        raise R2RUserError(f"split must be 'train' or 'test', got {split!r}")
    file_names = list(file_names)
    if file_names:
        with locked(Path(root) / LOCK_NAME):
            append_pair(root, file_names, split)


def _write_if_changed(path: Path, lines: list[str]) -> bool:
    text = "".join(line + "\n" for line in lines)
    try:
        old = path.read_bytes() if path.exists() else None
    except OSError:
        old = None
    if old == text.encode("utf-8"):
        return False
    atomic_write_text(path, text, what="index file")
    return True


def repair_indexes(root) -> bool:
    """Undo what a crash can leave, without dropping or reordering any line: an unterminated last line
    in our format (removed); the names of the last jsonl append missing from the txt (a crash between the
    two appends: appended to the txt); a split listed in only one of its two files (the other is created
    from it, so the next append cannot hide the listed names). Lists that differ in any other way were
    made so by someone else and are left as they are. True when a file changed."""
    root = Path(root)
    with locked(root / LOCK_NAME):
        idx = load_indexes(root)
        changed = False
        for f in idx.values():
            if f is not None and f.remnant is not None:
                changed |= _write_if_changed(f.path, [raw for _, raw in f.entries])
        for split in SPLITS:
            jf, tf = idx[(split, ".jsonl")], idx[(split, ".txt")]
            jn, tn = ([n for n, _ in f.entries] if f else [] for f in (jf, tf))
            if (jf is None) != (tf is None):  # only one of the pair exists: make the other from it
                ext, names = (".jsonl", tn) if jf is None else (".txt", jn)
                if names:
                    changed |= _write_if_changed(root / f"{split}{ext}", [_default_line(ext, n) for n in names])
                continue
            have = set(tn)
            missing = [n for n in dict.fromkeys(jn) if n not in have]
            if missing and jn[-len(missing):] == missing:
                append_bytes(root / f"{split}.txt", "".join(f"{n}\n" for n in missing).encode("utf-8"))
                changed = True
        return changed


def _complete(root: Path, file_name: str) -> bool:
    try:
        s = sample_from_file_name(root, file_name)
    except R2RUserError:
        return False
    return s.composite.exists() and s.mask.exists() and s.real.exists()


def rebuild_indexes(root, ours: dict[str, list[str]] | None = None) -> dict[str, int]:
    """Merge the run's own composites ``ours`` (split -> names, e.g. make-dataset's records) into the
    indexes: other lines stay as written, in order; ours follow sorted, once each, only when their files
    exist, a name recorded in both splits only in test (no train/test leak). Returns the listed counts."""
    root = Path(root)
    ours = ours or {}
    home: dict[str, str] = {}
    for split in SPLITS:
        for n in ours.get(split, []):
            if home.get(n) != "test":
                home[n] = split
    with locked(root / LOCK_NAME):
        idx = load_indexes(root)
        complete = {n for n in home if _complete(root, n)}
        counts = {}
        for ext in EXTS:
            earlier: dict[str, str] = {}  # a line of ours as it is already written (captions kept)
            for split in SPLITS:
                f = idx[(split, ext)]
                for n, raw in (f.entries if f else []):
                    if n in home:
                        earlier.setdefault(n, raw)
            for split in SPLITS:
                f = idx[(split, ext)]
                kept = [raw for n, raw in (f.entries if f else []) if n not in home]
                mine = sorted(n for n in complete if home[n] == split)
                lines = kept + [earlier.get(n) or _default_line(ext, n) for n in mine]
                _write_if_changed(root / f"{split}{ext}", lines)
                if ext == ".jsonl":
                    counts[split] = len(lines)
    return counts
