"""Files in and out, in one place: atomic writes, output-path checks, image and mask readers.

* :func:`atomic_writer` / :func:`atomic_write_bytes` / :func:`append_bytes`: every file r2r writes goes
  through ``<name>.tmp-<pid>`` in the final folder and ``os.replace`` (index lines: one ``O_APPEND``
  write, cut back on failure), so a crash, a full disk or an over-long name never leaves a truncated
  file under the final name (``TEMP_MARKER`` is how other code recognises leftovers). The errors a user
  can fix (full disk, quota, read-only file system, name too long, permissions) become
  :class:`OutputWriteError`: an :class:`~r2r.errors.R2RUserError` (exit 2 on the CLIs) that is also an
  ``OSError``, naming the folder and what to do.
* :func:`check_output_file` / :func:`check_inside`: called *before* any long
  work, so an unwritable, missing, clashing or escaping destination is reported before the result is
  computed. The one overwrite rule: an existing file is replaced only when it is this command's own
  earlier output (``replaceable``) or the user said ``--overwrite``; an input never.
* :func:`read_image` / :func:`read_mask` / :func:`read_input_bytes`: image files -> ``HxWx3`` / ``HxW``
  uint8 arrays. Regular files are read directly; a named pipe or process substitution (``<(cat x.png)``,
  ``/dev/stdin``) is read once, with a size limit and a time limit for a pipe nobody writes to; folders,
  devices and sockets are refused.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .errors import R2RUserError
from .own_outputs import with_marker

#: marker inside the names of files that are still being written (``name.tmp-<pid>``)
TEMP_MARKER = ".tmp-"
#: image file extensions r2r reads and writes
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
#: the most bytes read from a pipe (or another stream) given as an input file
MAX_STREAM_BYTES = 1 << 30
#: how long a pipe may stay silent (nothing written to it yet) before reading it gives up, in seconds
STREAM_IDLE_S = 20.0


class OutputWriteError(R2RUserError, OSError):
    """Writing an output failed for a reason the user can fix (full disk, name too long, ...).

    An :class:`~r2r.errors.R2RUserError` (the CLIs exit 2 with the message) and an ``OSError`` (code that
    handles write failures keeps working); ``errno`` / ``strerror`` / ``filename`` are the original's."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def write_error(exc: OSError, path, what: str = "file") -> OSError:
    """``exc`` (an OSError from writing ``path``) as an :class:`OutputWriteError` that names the folder and
    the fix, for the causes a user can fix; any other OSError is returned unchanged."""
    if isinstance(exc, OutputWriteError):
        return exc
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    code = exc.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        why = "no space left on the disk" if code == errno.ENOSPC else "the disk quota is used up"
        text = (f"Cannot write the {what} {path}: {why} that holds {folder}. Nothing was half-written "
                "(no partial file stays and the earlier files are intact). Free some space (or choose a folder "
                "on another disk), then run the same command again.")
    elif code == errno.ENAMETOOLONG:
        longest = max((p for p in path.parts), key=lambda p: len(p.encode("utf-8", "surrogateescape")))
        text = (f"Cannot write the {what} {path}: the name {longest[:60]!r}"
                f"{'...' if len(longest) > 60 else ''} ({len(longest.encode('utf-8', 'surrogateescape'))} bytes) "
                f"or the whole path ({len(str(path))} characters) is longer than the file system allows in "
                f"{folder} (at most {_name_max(folder) if os.path.isdir(folder) else 255} bytes per name). Use a "
                "shorter output name or folder (shorter --out / --subset / name prefix, or shorter source "
                "file names). Nothing was written.")
    elif code == errno.EROFS:
        text = (f"Cannot write the {what} {path}: {folder} is on a read-only file system. Choose a folder "
                "you can write to. Nothing was written.")
    elif code in (errno.EACCES, errno.EPERM):
        text = (f"Cannot write the {what} {path}: permission denied in {folder}. Fix the folder's "
                "permissions or choose another folder. Nothing was written.")
    else:
        return exc
    err = OutputWriteError(text)
    err.errno, err.strerror, err.filename = code, exc.strerror, str(path)
    return err


# ----------------------------------------------------------------------------- atomic writes


def temp_path(path) -> Path:
    """``<name>.tmp-<pid>`` beside ``path``; a shorter hashed name when that would exceed the file
    system's name limit (so a final name that fits is never refused because of its temp name)."""
    path = Path(path)
    suffix = f"{TEMP_MARKER}{os.getpid()}"
    name = f"{path.name}{suffix}"
    if len(name.encode("utf-8", "surrogateescape")) > 240:
        digest = hashlib.sha1(path.name.encode("utf-8", "surrogateescape")).hexdigest()[:20]
        name = f".r2r-{digest}{suffix}"
    return path.with_name(name)


@contextlib.contextmanager
def atomic_writer(path, *, fsync: bool = False, what: str = "file") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    On any exception the temporary file is removed and ``path`` is left as it was; a full disk, an
    over-long name, a read-only file system or a permission error becomes :class:`OutputWriteError`
    (the message names the folder and the fix). ``fsync=True`` flushes the file to disk before the
    rename (checkpoints). The parent folder is created when missing.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if fsync and tmp.exists():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        err = write_error(exc, path, what) if isinstance(exc, OSError) else exc
        if err is not exc:
            raise err from exc
        raise


def atomic_write_bytes(path, data: bytes, *, fsync: bool = False, what: str = "file") -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path, fsync=fsync, what=what) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path, text: str, *, fsync: bool = False, what: str = "file") -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync, what=what)


def append_bytes(path, data: bytes, *, what: str = "index file") -> None:
    """Append ``data`` to ``path`` (created if missing) in one ``O_APPEND`` write, so lines written by
    several processes never interleave. If the write fails part-way (disk full), the file is cut back to
    its size before and a file this call created is removed: no half line stays."""
    path = Path(path)
    existed = path.exists()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        _reraise(exc, path, what)
    try:
        start = os.fstat(fd).st_size
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        os.close(fd)
        if not existed:
            with contextlib.suppress(OSError):
                path.unlink()
        _reraise(exc, path, what)
    os.close(fd)


def _reraise(exc: OSError, path, what: str):
    err = write_error(exc, path, what)
    if err is exc:
        raise exc
    raise err from exc


# ----------------------------------------------------------------------------- output checks


def _identity(path) -> tuple | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def free_name(base) -> str:
    """``base``, or ``base-1``, ``base-2`` ... : the first name that does not exist yet (for moving a folder aside)."""
    name, n = str(base), 1
    while os.path.lexists(name):
        name, n = f"{base}-{n}", n + 1
    return name


def check_name_length(path, what: str = "output file") -> None:
    """Refuse a name longer than the file system takes, before any work (the write would fail after it)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    probe = folder
    while not os.path.isdir(probe) and probe != probe.parent:
        probe = probe.parent
    limit = _name_max(probe)
    for part in path.parts:
        if len(part.encode("utf-8", "surrogateescape")) > limit:
            raise write_error(OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG)), path, what)


def check_writable_dir(folder, what: str = "output folder", create: bool = True) -> Path:
    """``folder`` exists (or is created when ``create``) and a file can be written in it."""
    folder = Path(folder)
    check_name_length(folder / "x", what)
    if folder.exists() and not folder.is_dir():
        raise R2RUserError(f"The {what} {folder} is a file, not a folder; give a folder path.")
    if not folder.exists():
        if not create:
            raise R2RUserError(f"The {what} {folder} does not exist; create it first or give an existing folder.")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.ENAMETOOLONG, errno.EROFS):
                raise write_error(exc, folder / ".", what) from exc
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


def check_inside(path, folder, what: str = "output") -> Path:
    """``path`` (symbolic links followed) lies inside ``folder`` (the folder the user chose); otherwise an
    R2RUserError with both paths. Call it for every folder and file a command writes, before writing."""
    base = os.path.realpath(folder)
    real = os.path.realpath(path)
    if real != base and os.path.commonpath([base, real]) != base:
        raise R2RUserError(
            f"The {what} {path} resolves to {real}, outside {folder} (a symbolic link on the way leads out of "
            "it); r2r writes only inside the folder you chose. Remove or replace the link (or choose another "
            "folder). Nothing was written."
        )
    return Path(path)


def check_output_file(path, *, inputs: Iterable = (), overwrite: bool = False,
                      replaceable: Callable[[Path], bool] | None = None, extensions: Iterable[str] | None = None,
                      what: str = "output file", overwrite_hint: str = "pass --overwrite") -> Path:
    """Check an output file path before the work that produces it.

    The one overwrite rule: an existing file is replaced only when ``overwrite`` is True (the user asked)
    or ``replaceable(path)`` says it is this command's own earlier output (e.g. :func:`is_own_report`);
    one of ``inputs`` never (also through a symbolic or hard link). Also refuses an existing folder or
    non-regular file, an extension outside ``extensions``, a name longer than the file system takes, and
    a parent folder that cannot be created or written.
    """
    path = Path(path)
    check_name_length(path, what)
    real, ident = os.path.realpath(path), _identity(path)
    for item in inputs:
        if item is None:
            continue
        if os.path.realpath(item) == real or (ident is not None and _identity(item) == ident):
            raise R2RUserError(f"The {what} {path} is also an input ({item}); writing it would destroy the input. "
                               "Choose another output path.")
    if path.is_dir():
        raise R2RUserError(f"The {what} {path} is a folder; give a file name (e.g. {path / 'result.png'}).")
    if extensions is not None:
        exts = tuple(e.lower() for e in extensions)
        if path.suffix.lower() not in exts:
            raise R2RUserError(f"The {what} {path} has the extension {path.suffix or '(none)'!r}; "
                               f"use one of {', '.join(exts)}.")
    if os.path.lexists(path):
        if path.exists() and not path.is_file():
            raise R2RUserError(f"The {what} {path} exists and is not a regular file (a pipe, device or socket); "
                               "choose another name.")
        if not overwrite and not (replaceable is not None and path.is_file() and replaceable(path)):
            raise R2RUserError(f"The {what} {path} already exists and is not an earlier result of this command; "
                               f"r2r does not replace it unless asked. Choose another name, or {overwrite_hint} "
                               "to replace it.")
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


def _kind_of(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_input_file(path, kind: str = "input") -> os.stat_result:
    """``path`` exists, is readable and is a file or a pipe (named pipe, ``<(...)``, ``/dev/stdin``);
    folders, devices and sockets are refused. Returns its ``os.stat`` (symbolic links followed)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        what = "is a symbolic link to nothing" if os.path.islink(path) else "does not exist"
        raise R2RUserError(f"The {kind} file {path} {what}; check the path.") from None
    except OSError as exc:
        raise R2RUserError(f"The {kind} file {path} cannot be opened ({exc.strerror or exc}); check the path.") from None
    if stat.S_ISDIR(st.st_mode):
        raise R2RUserError(f"The {kind} path {path} is a folder; give an image file.")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise R2RUserError(f"The {kind} path {path} is {_kind_of(st.st_mode)}, not a file; give an image file "
                           "(or a pipe such as <(cat image.png)).")
    if not os.access(path, os.R_OK):
        raise R2RUserError(f"The {kind} file {path} is not readable (permissions); fix them or copy the file.")
    return st


def _read_stream(path: Path, kind: str, max_bytes: int, idle_s: float) -> bytes:
    """Everything written to a pipe until its writer closes it; never blocks longer than ``idle_s`` at a
    time (a named pipe that nothing writes to) and never reads more than ``max_bytes``."""
    import select

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise R2RUserError(f"The {kind} pipe {path} cannot be opened ({exc.strerror or exc}).") from None
    chunks, total = [], 0
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        while True:
            if not poller.poll(max(1, int(idle_s * 1000))):
                raise R2RUserError(
                    f"The {kind} file {path} is a pipe and nothing was written to it for {idle_s:g} s (a named pipe "
                    f"with no program writing into it?); start the writer first, or give a regular image file.")
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise R2RUserError(f"The {kind} pipe {path} delivered more than {max_bytes >> 20} MiB; that is not "
                                   "an image r2r reads. Give a regular image file.")
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_input_bytes(path, kind: str = "input", max_bytes: int | None = None, idle_s: float | None = None) -> bytes:
    """The bytes of an input file or pipe, read once (see :func:`check_input_file`)."""
    path = Path(path)
    st = check_input_file(path, kind)
    limit = MAX_STREAM_BYTES if max_bytes is None else max_bytes
    if stat.S_ISREG(st.st_mode):
        if st.st_size > limit:
            raise R2RUserError(f"The {kind} file {path} is {st.st_size >> 20} MiB, more than the {limit >> 20} MiB "
                               "r2r reads; check that it is the right file.")
        return path.read_bytes()
    return _read_stream(path, kind, limit, STREAM_IDLE_S if idle_s is None else idle_s)


def _imread(path: Path, kind: str):
    import cv2
    import numpy as np

    st = check_input_file(path, kind)
    if stat.S_ISREG(st.st_mode):
        data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    else:  # a pipe: read it once, decode from memory
        raw = read_input_bytes(path, kind)
        data = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED) if raw else None
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


def encode_image(rgb_uint8, ext: str, jpeg_quality: int = 95, marker: str | None = None) -> bytes:
    """``HxWx3 uint8`` RGB -> the bytes of an image file of type ``ext`` (``.png``, ``.jpg``, ...).

    ``marker`` (e.g. ``"harmonize"``): recorded in a PNG text chunk / JPEG comment (see :func:`is_own_image`)."""
    import cv2

    ext = ext.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise R2RUserError(f"Unsupported image extension {ext!r}; use one of {', '.join(IMAGE_EXTENSIONS)}.")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext in (".jpg", ".jpeg") else []
    image = rgb_uint8 if rgb_uint8.ndim == 2 else cv2.cvtColor(rgb_uint8, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(ext, image, params)
    if not ok:
        raise R2RUserError(f"OpenCV could not encode the image as {ext}; try .png.")
    data = buf.tobytes()
    return data if marker is None else with_marker(data, ext, marker)


def write_image(path, rgb_uint8, jpeg_quality: int = 95, marker: str | None = None) -> Path:
    """Write ``HxWx3 uint8`` RGB (or ``HxW`` grey) atomically (``marker``: see :func:`encode_image`)."""
    path = Path(path)
    return atomic_write_bytes(path, encode_image(rgb_uint8, path.suffix, jpeg_quality, marker))
