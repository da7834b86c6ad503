"""The output folder's lock: taken before the trainer checks anything or loads a model, held until it ends.

* POSIX (Linux, macOS): an exclusive ``flock`` on the folder itself (no lock file), so the lock moves with
  the folder when ``--overwrite`` moves an old run aside, and the system drops it when the process dies.
* Elsewhere (Windows): ``filelock`` (the project's cross-process lock, as the dataset writer uses) on
  ``<folder>/.r2r-training.lock``; a lock file never makes a folder "used".

A folder that does not exist yet is created to hold the lock (its missing parents too). When the run then
stops before it wrote anything (a user error, a model that does not load), :meth:`OutputLock.release` with
``cleanup=True`` removes the folders it created, if they are still empty: no half-made run stays behind.
A second run on the same folder is refused at once, before it reads a checkpoint or loads a model.
"""

from __future__ import annotations

import contextlib
import errno
import os

from r2r.errors import R2RUserError

#: the lock file on systems without ``flock`` (ignored when deciding whether a folder holds a run)
LOCK_FILE = ".r2r-training.lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def busy_message(folder: str) -> str:
    return (f"another training run is using the output folder {folder} right now; wait for it to finish or choose "
            "another --output-dir (nothing was changed)")


def _missing_dirs(folder: str) -> list[str]:
    """``folder`` and those of its parents that do not exist, outermost first."""
    out, p = [], os.path.abspath(folder)
    while not os.path.exists(p):
        out.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return out[::-1]


def folder_error(exc: OSError, folder: str, key: str = "output.dir") -> R2RUserError:
    """An OSError met while creating or opening the output folder, as a user error naming it and the fix."""
    code = exc.errno
    if code == errno.ENAMETOOLONG:
        longest = max(os.path.abspath(folder).split(os.sep), key=len)
        fix = (f"a name in it ({len(longest.encode('utf-8', 'surrogateescape'))} bytes: {longest[:40]!r}...) or the "
               f"whole path ({len(os.path.abspath(folder))} characters) is longer than the file system allows; "
               "choose a shorter --output-dir")
    elif code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        fix = "the disk that holds it is full; free some space or choose a folder on another disk"
    elif code == errno.EROFS:
        fix = "it is on a read-only file system; choose a folder you can write to"
    elif code in (errno.EACCES, errno.EPERM):
        fix = "permission denied; fix the permissions or choose another --output-dir"
    else:
        fix = f"{exc.strerror or exc}; choose another --output-dir"
    return R2RUserError(f"{key} {folder} cannot be created or opened: {fix}. Nothing was written.")


class OutputLock:
    """Exclusive lock on a training output folder (see the module doc). ``create=True`` makes the folder
    (and missing parents) first; :attr:`created` lists the folders this lock made, outermost first."""

    def __init__(self, folder: str, *, create: bool = False, key: str = "output.dir"):
        self.folder = folder
        self.created: list[str] = []
        self.fd = None
        self._filelock = None
        for _attempt in range(5):  # another run's cleanup may remove the folder between mkdir and open
            if create:
                self._make(key)
            if self._acquire(key):
                return
        raise R2RUserError(busy_message(folder))

    def _make(self, key: str) -> None:
        for d in _missing_dirs(self.folder):
            try:
                os.mkdir(d)
            except FileExistsError:
                continue  # made by someone else in the meantime: not ours to remove
            except OSError as exc:
                self._remove_created()
                raise folder_error(exc, self.folder, key) from exc
            self.created.append(d)

    def _acquire(self, key: str) -> bool:
        """True when locked; False when the folder vanished under us (try again)."""
        if fcntl is None:
            return self._acquire_filelock(key)
        try:
            fd = os.open(self.folder, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise R2RUserError(f"cannot open the output folder {self.folder} ({exc.strerror}); fix its permissions or "
                               "choose another --output-dir") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise R2RUserError(busy_message(self.folder)) from None
        try:  # still the folder at that path (not one another run removed and a third one re-created)?
            same = os.path.samestat(os.fstat(fd), os.stat(self.folder))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def _acquire_filelock(self, key: str) -> bool:
        from filelock import FileLock, Timeout

        if not os.path.isdir(self.folder):
            return False
        lock = FileLock(os.path.join(self.folder, LOCK_FILE))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise R2RUserError(busy_message(self.folder)) from None
        except OSError as exc:
            raise folder_error(exc, self.folder, key) from exc
        self._filelock = lock
        return True

    @property
    def moves_with_folder(self) -> bool:
        """True for ``flock`` (the lock follows a renamed folder); the lock file must be let go before a move."""
        return self._filelock is None

    def _remove_created(self) -> None:
        """Remove the folders this lock created, innermost first, as long as they are empty."""
        if self.created and self._filelock is None and fcntl is None:
            with contextlib.suppress(OSError):  # our own lock file (already unlocked)
                os.unlink(os.path.join(self.folder, LOCK_FILE))
        for d in reversed(self.created):
            try:
                os.rmdir(d)
            except OSError:  # not empty (someone put something there) or already gone: leave it
                break
        self.created = []

    def release(self, cleanup: bool = False) -> None:
        """Drop the lock; ``cleanup``: also remove the folders it created if they are still empty (with
        ``flock`` while still locked, so no other run can start in between; a lock file is let go first)."""
        if cleanup and self.fd is not None:
            self._remove_created()
        if self._filelock is not None:
            self._filelock.release()
            self._filelock = None
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None
        if cleanup:
            self._remove_created()
        self.created = []

    def __del__(self):
        with contextlib.suppress(Exception):
            self.release()
