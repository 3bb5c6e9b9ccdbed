"""Split membership and row order from a seeded hash of (PLATE, MJD, FIBERID), never from catalog position.

So the train/val/test assignment and the order of rows do not change with shard_size, processes, limit
or how the catalog is sorted.
"""

from __future__ import annotations

import numpy as np


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic is intended)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def uniform(keys: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """Deterministic uniform [0, 1) per key for a given seed; `salt` gives independent streams."""
    mix = splitmix64(np.array([(int(seed) & 0xFFFFFFFF) << 8 | salt], dtype=np.uint64))[0]
    h = splitmix64(keys.astype(np.uint64) ^ mix)
    return (h >> np.uint64(11)).astype(np.float64) / float(2 ** 53)
