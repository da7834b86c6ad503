"""Worker processes of ``make-dataset``: a spawn-context process pool whose workers run one
thread each and die with their parent.

Workers die with the parent in two ways: on Linux the kernel sends them SIGKILL when the parent
process dies (``prctl(PR_SET_PDEATHSIG)``, set in the worker initializer); on every POSIX system
a watchdog thread in each worker exits the worker within :data:`WATCHDOG_INTERVAL_S` seconds once
it has been re-parented. Without this, workers of a killed parent wait forever for work.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from ..errors import R2RUserError

#: how often a worker checks that its parent is alive (seconds)
WATCHDOG_INTERVAL_S = 0.5
_PR_SET_PDEATHSIG = 1


def _die_with_parent_linux() -> None:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl in this libc: the watchdog still runs
        pass


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)  # the parent is gone: nobody will collect this worker's results
        time.sleep(WATCHDOG_INTERVAL_S)


def worker_init(parent_pid: int) -> None:
    """Runs first in every worker: die with the parent, one thread for OpenCV and the FFTs."""
    if sys.platform.startswith("linux"):
        _die_with_parent_linux()
    if os.name == "posix":
        if os.getppid() != parent_pid:  # the parent died before the line above took effect
            os._exit(1)
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="r2r-parent-watchdog", daemon=True).start()
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # only a speed setting
        pass
    try:
        from ..blending import poisson
    except ImportError:  # a custom generator may not need the blending code; this is only a speed setting
        return
    setter = getattr(poisson, "set_num_threads", None)
    if setter is not None:
        setter(1)


def run_pool(units, work, workers: int, on_result, keep_going: bool) -> bool:
    """Run ``work(unit)`` for every unit in ``workers`` processes (at most ``3 * workers`` queued),
    calling ``on_result(result)`` in this process as results arrive. Returns True when it stopped
    early because a result failed and ``keep_going`` is False."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                               initializer=worker_init, initargs=(os.getpid(),))
    pending = set()
    it = iter(units)
    stopped = False

    def top_up():
        for u in it:
            pending.add(pool.submit(work, u))
            if len(pending) >= workers * 3:
                break

    try:
        top_up()
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                res = fut.result()
                on_result(res)
                if res["status"] != "ok" and not keep_going:
                    stopped = True
            if stopped:
                for f in pending:
                    f.cancel()
                for f in pending:
                    if not f.cancelled():
                        on_result(f.result())
                break
            top_up()
    except BrokenProcessPool as exc:
        raise R2RUserError(
            "a make-dataset worker process died (out of memory, killed, or started from a script without an "
            "`if __name__ == '__main__':` guard, which worker processes need). Run with --workers 1 to see the "
            "failing image, lower --workers, or guard the script's entry point"
        ) from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return stopped
