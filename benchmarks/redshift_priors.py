"""Share of simulated objects at low redshift under the class recipes' priors (docs/models.md figures).

    python benchmarks/redshift_priors.py

Galaxies: the classes_nearby_artefacts galaxy redshift draw (z 0.001-1.2, its z shapes, red cover 9200 Å) with the
floor uniform in z and uniform in ln z (galaxy_z_floor), share below z 0.006 (cz 1800 km/s). Quasars: the dr16q
redshift prior, share below z 0.02. Redshift draws only: no spectrum is simulated.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fnet.simulate.galaxies import GalaxyModel  # noqa: E402
from fnet.simulate.simulator import draw_redshifts  # noqa: E402
from fnet.train.config import load_config  # noqa: E402

N = 20000


def main() -> None:
    sim = load_config("classes_nearby_artefacts").to_dict()["data"]["simulator"]
    for floor in ("uniform", "log"):
        galaxies = GalaxyModel(ROOT.parent / "shared" / "data", z_range=tuple(sim["galaxy_z_range"]),
                               z_shapes=sim["galaxy_z_shapes"], red_cover=sim["galaxy_red_cover"], z_floor=floor)
        z = galaxies.draw_z(galaxies.draw_subtypes(N, np.random.default_rng(1)), np.random.default_rng(2),
                            3566.0, 10323.0)
        print(f"galaxies, floor {floor:7s}: {np.mean(z < 0.006):6.2%} below z 0.006")
    z = draw_redshifts(1_000_000, (0.0, 7.0), np.random.default_rng(1), "dr16q")
    print(f"quasars (dr16q prior): {np.mean(z < 0.02):.3%} below z 0.02 (1 in {1 / np.mean(z < 0.02):.0f})")


if __name__ == "__main__":
    main()
