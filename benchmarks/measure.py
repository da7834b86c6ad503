"""How the benchmarks measure memory (and wait for the device), on a CPU and on CUDA — one definition for all.

On CUDA: ``torch.cuda`` allocator statistics (weights and activations the process allocated). On a CPU: the
process's resident set from ``/proc/self`` (Linux); the peak is the kernel's high-water mark ``VmHWM``, which
:func:`reset_peak` lowers to the current resident size so a peak measures one run alone (``ru_maxrss`` where
``/proc`` is missing: the peak since the process started).
"""

from __future__ import annotations

import os
import resource


def _is_cuda(device) -> bool:
    """``"cuda[:N]"`` or a CUDA ``torch.device`` (torch is imported for CUDA only: a CPU measure adds nothing
    to the memory it measures)."""
    return str(getattr(device, "type", device)).split(":")[0] == "cuda"


def sync(device) -> None:
    """Wait for the device's queued work (CUDA), so a clock or a memory figure read next is complete."""
    if _is_cuda(device):
        import torch

        torch.cuda.synchronize(device)


def reset_peak(device) -> bool:
    """Start a new peak from the memory in use now; False where the CPU's peak cannot be reset."""
    if _is_cuda(device):
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # VmHWM := the current resident size
        return True
    except OSError:
        return False


def current_bytes(device) -> int:
    """Memory in use now: CUDA allocated bytes, or the process's resident set."""
    if _is_cuda(device):
        import torch

        return int(torch.cuda.memory_allocated(device))
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def peak_bytes(device) -> int:
    """The peak since the last :func:`reset_peak` (or the process start)."""
    if _is_cuda(device):
        import torch

        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
