"""Files in and out, in one place: atomic writes, output-path checks, image and mask readers.

* :func:`atomic_writer` / :func:`atomic_write_bytes`: every file r2r writes goes through
  ``<name>.tmp-<pid>`` in the final folder and ``os.replace``, so a crash never leaves a
  truncated file under the final name (``TEMP_MARKER`` is how other code recognises leftovers).
* :func:`check_output_file` / :func:`check_output_dir`: called *before* any long work, so an
  unwritable, missing or clashing destination is reported before the result is computed.
* :func:`read_image` / :func:`read_mask`: image files -> ``HxWx3`` / ``HxW`` uint8 arrays.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import R2RUserError

#: marker inside the names of files that are still being written (``name.tmp-<pid>``)
TEMP_MARKER = ".tmp-"
#: image file extensions r2r reads and writes
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


# ----------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_writer(path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    On any exception the temporary file is removed and ``path`` is left as it was.
    ``fsync=True`` flushes the file to disk before the rename (checkpoints). The parent folder
    is created when missing.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}{TEMP_MARKER}{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        if fsync and tmp.exists():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path, fsync=fsync) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path, text: str, *, fsync: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


# ----------------------------------------------------------------------------- output checks


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_writable_dir(folder, what: str = "output folder", create: bool = True) -> Path:
    """``folder`` exists (or is created when ``create``) and a file can be written in it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise R2RUserError(f"The {what} {folder} is a file, not a folder; give a folder path.")
    if not folder.exists():
        if not create:
            raise R2RUserError(f"The {what} {folder} does not exist; create it first or give an existing folder.")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise R2RUserError(f"Cannot create the {what} {folder}: {exc.strerror or exc}. "
                               "Choose a folder you can write to.") from exc
    try:
        fd, probe = tempfile.mkstemp(prefix=".r2r-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise R2RUserError(f"Cannot write into the {what} {folder}: {exc.strerror or exc}. "
                           "Choose a folder you can write to (or fix its permissions / free some space).") from exc
    return folder


def check_output_file(path, *, inputs: Iterable = (), overwrite: bool = True,
                      extensions: Iterable[str] | None = None, what: str = "output file") -> Path:
    """Check an output file path before the work that produces it.

    Refuses a path that is one of ``inputs`` (never overwrite an input), an existing folder,
    an existing file when ``overwrite`` is False, an extension outside ``extensions``, and a
    parent folder that cannot be created or written.
    """
    path = Path(path)
    if extensions is not None:
        exts = tuple(e.lower() for e in extensions)
        if path.suffix.lower() not in exts:
            raise R2RUserError(f"The {what} {path} has the extension {path.suffix or '(none)'!r}; "
                               f"use one of {', '.join(exts)}.")
    for item in inputs:
        if item is None:
            continue
        item = Path(item)
        if path.resolve() == item.resolve() or _same_file(path, item):
            raise R2RUserError(f"The {what} {path} is also an input ({item}); writing it would destroy the input. "
                               "Choose another output path.")
    if path.is_dir():
        raise R2RUserError(f"The {what} {path} is a folder; give a file name (e.g. {path / 'result.png'}).")
    if path.exists() and not overwrite:
        raise R2RUserError(f"The {what} {path} already exists; choose another name or allow overwriting.")
    check_writable_dir(path.parent if str(path.parent) else Path("."), what=f"folder of the {what}")
    return path


# ----------------------------------------------------------------------------- readers


def _to_uint8(data):
    import numpy as np

    if data.dtype == np.uint8:
        return data
    if data.dtype == np.uint16:
        return (data.astype(np.float64) / 257.0).round().astype(np.uint8)
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise R2RUserError("The image contains NaN or infinite values; save it as an 8- or 16-bit image "
                               "(or replace the invalid pixels) and try again.")
        return (np.clip(data, 0, 1) * 255).round().astype(np.uint8)
    return np.clip(data, 0, 255).astype(np.uint8)


def _imread(path: Path, kind: str):
    import cv2

    if not path.exists():
        raise R2RUserError(f"The {kind} file {path} does not exist; check the path.")
    if path.is_dir():
        raise R2RUserError(f"The {kind} path {path} is a folder; give an image file.")
    if not os.access(path, os.R_OK):
        raise R2RUserError(f"The {kind} file {path} is not readable (permissions); fix them or copy the file.")
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise R2RUserError(f"Could not read {path} as an image; expected PNG, JPEG, WebP, BMP or TIFF "
                           "(the file may be truncated or not an image).")
    try:
        return _to_uint8(data)
    except R2RUserError as exc:
        raise R2RUserError(f"{path}: {exc}") from None


def read_image(path):
    """An image file -> ``HxWx3 uint8`` RGB (16-bit files are scaled, grey is replicated, alpha dropped)."""
    import cv2
    import numpy as np

    path = Path(path)
    data = _imread(path, "image")
    if data.ndim == 2:
        data = np.repeat(data[..., None], 3, axis=2)
    elif data.shape[2] == 4:
        data = cv2.cvtColor(data, cv2.COLOR_BGRA2RGB)
    elif data.shape[2] == 3:
        data = cv2.cvtColor(data, cv2.COLOR_BGR2RGB)
    else:
        raise R2RUserError(f"{path} has {data.shape[2]} channels; expected an RGB (or grey/RGBA) image.")
    return np.ascontiguousarray(data)


def read_mask(path):
    """A mask file -> ``HxW uint8`` (0..255; white = foreground). RGBA files: the alpha channel,
    unless it is constant (a fully opaque PNG) — then, like RGB files, their grey value."""
    import cv2

    path = Path(path)
    data = _imread(path, "mask")
    if data.ndim == 3:
        alpha = data[..., 3] if data.shape[2] == 4 else None
        if alpha is not None and alpha.min() != alpha.max():
            return alpha
        data = cv2.cvtColor(data[..., :3], cv2.COLOR_BGR2GRAY)
    return data


def encode_image(rgb_uint8, ext: str, jpeg_quality: int = 95) -> bytes:
    """``HxWx3 uint8`` RGB -> the bytes of an image file of type ``ext`` (``.png``, ``.jpg``, ...)."""
    import cv2

    ext = ext.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise R2RUserError(f"Unsupported image extension {ext!r}; use one of {', '.join(IMAGE_EXTENSIONS)}.")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext in (".jpg", ".jpeg") else []
    image = rgb_uint8 if rgb_uint8.ndim == 2 else cv2.cvtColor(rgb_uint8, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(ext, image, params)
    if not ok:
        raise R2RUserError(f"OpenCV could not encode the image as {ext}; try .png.")
    return buf.tobytes()


def write_image(path, rgb_uint8, jpeg_quality: int = 95) -> Path:
    """Write ``HxWx3 uint8`` RGB (or ``HxW`` grey) atomically."""
    path = Path(path)
    return atomic_write_bytes(path, encode_image(rgb_uint8, path.suffix, jpeg_quality))
