"""The controller residuals between the residual stage and the U-Net loop, and their cache.

The Harmony Controller never sees the noisy latent: its residuals depend on the composite (hint
and mask), the reference, the strength and the timestep only. :class:`Residuals` holds them for a
plan's timesteps — kept on the device, in host RAM, or (``recompute``) computed per step inside
the loop. :class:`ResidualCache` keeps them between calls, per timestep: a new seed, or another
sampler that visits the same timesteps, runs no controller at all. The nodes keep one cache on
the MODEL that MACA Controller Apply returns and one on the KSampler path's control object.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import cast

log = logging.getLogger(__name__)

#: one timestep's residuals: (12 down residuals, mid residual)
Entry = tuple


@dataclass(eq=False)
class Residuals:
    """Controller residuals for one plan: ``entries[i]`` for timestep ``i``, or computed by ``compute(i, t)``."""

    entries: list | None
    compute: Callable | None
    placement: str
    batch: int
    consume: bool = False  # drop each entry from ``entries`` once used (a ResidualCache keeps its own references)

    def __call__(self, i: int, t):
        if self.entries is None:
            return cast(Callable, self.compute)(i, t)
        entry = self.entries[i]
        if self.consume:
            self.entries[i] = None
        return entry

    @property
    def recomputed(self) -> bool:
        return self.entries is None

    def consuming(self) -> Residuals:
        """The same residuals (the same list), each entry dropped once the loop has used it, so the memory
        it held is released during the loop: for a caller that does not use these residuals again."""
        return dataclasses.replace(self, consume=True)


class ResidualCache:
    """Residuals of one composite / reference / strength / device / dtype, by timestep.

    A new key (another composite, reference, strength...) drops what was kept; ``max_entries``
    bounds the timesteps kept for one key (different step counts visit different timesteps)."""

    def __init__(self, max_entries: int = 2000):
        self.key: Hashable = None
        self._by_t: dict[float, Entry] = {}
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def lookup(self, key: Hashable, timesteps) -> list:
        """One entry (or None) per timestep of ``timesteps`` for ``key``."""
        if key != self.key:
            if self._by_t:
                log.debug("residual cache: new composite / reference / strength, %d entries dropped", len(self._by_t))
            self.key, self._by_t = key, {}
        found = [self._by_t.get(float(t)) for t in timesteps]
        hits = sum(e is not None for e in found)
        self.hits += hits
        self.misses += len(found) - hits
        return found

    def store(self, key: Hashable, t, entry: Entry) -> None:
        if key != self.key:
            self.key, self._by_t = key, {}
        if len(self._by_t) >= self.max_entries:
            self._by_t.pop(next(iter(self._by_t)))
        self._by_t[float(t)] = entry

    def clear(self) -> None:
        self.key, self._by_t = None, {}

    def __len__(self) -> int:
        return len(self._by_t)
