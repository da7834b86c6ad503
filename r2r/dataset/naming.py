"""Determinism of ``make-dataset``: everything about a source image (its output name, split,
shard, composite seeds and reference image) is a hash of the global seed and the image's key
(its path relative to the image folder), never of worker order, worker count or shard.
"""

from __future__ import annotations

import hashlib

from .writer import safe_name


def derive_seed(seed: int, *parts) -> int:
    """A 63-bit seed from the global seed and an item's identity (stable across processes)."""
    text = "|".join([str(int(seed))] + [str(p) for p in parts])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") & (2**63 - 1)


def _unit_hash(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") / 2**64


def shard_of(key: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(f"shard|{key}".encode()).digest()[:8], "little") % n


def split_of(key: str, test_fraction: float) -> str:
    """Split by the source image (all composites of one real image share a split)."""
    return "test" if _unit_hash(f"split|{key}") < test_fraction else "train"


#: the longest output name (ASCII): file names add ``_<k>_<j>.jpg`` (or ``.json`` for records) and must
#: stay within the usual 255-byte limit of a file name
MAX_NAME = 200


def _fit(name: str, key: str) -> str:
    """A name longer than :data:`MAX_NAME` is cut and given a hash of its key (still unique, still
    deterministic), so a deep or long source path never makes an output name the file system refuses."""
    if len(name) <= MAX_NAME:
        return name
    return f"{name[:MAX_NAME - 13].rstrip('-.')}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def assign_names(keys, prefix: str) -> dict[str, str]:
    """key -> output name (no '_' so the naming rule holds, at most :data:`MAX_NAME` characters);
    colliding names get a key hash."""
    base = {k: _fit(safe_name(prefix + k), k) for k in keys}
    counts: dict[str, int] = {}
    for n in base.values():
        counts[n] = counts.get(n, 0) + 1
    return {
        k: (n if counts[n] == 1 else f"{n}-{hashlib.sha1(k.encode()).hexdigest()[:6]}") for k, n in base.items()
    }


def pick_references(key: str, usable: list, seed: int, per_image: int) -> tuple[tuple[int, str], ...]:
    """((j, path of another usable source image), ...) for composites 1..per_image of ``key``."""
    if len(usable) < 2:
        return ()
    out = []
    for j in range(1, per_image + 1):
        idx = derive_seed(seed, key, "reference", j) % len(usable)
        if usable[idx].key == key:
            idx = (idx + 1) % len(usable)
        out.append((j, str(usable[idx].image)))
    return tuple(out)
