"""Simulated BOSS-like quasar spectra (numpy + astropy only, no torch).

    from fnet.simulate import QuasarSimulator
    sim = QuasarSimulator(source="auto", seed=1)      # templates + parametric when ../shared/data exists
    batch = sim.sample(256, z_range=(0.0, 7.0))       # SimulatedBatch: loglam, flux, ivar, and_mask, good, z, ...

Sources: "templates" (redrock PCA bases drawn around coefficients fitted to real BOSS quasars, VdB2001 and
Selsing2015 composites), "parametric" (built-in published line list and continuum; needs no files), "mixed", or
"auto" (mixed when the templates are found, else parametric). Noise and masks come from real BOSS ivar/and_mask/sky
vectors when available, else from a synthetic BOSS-like model. See docs in each module.

SpectrumMixSimulator (mixture.py) adds what a quasar target list also holds: stars (stars.py), galaxies
(galaxies.py) and low-z AGN with their host galaxies (agn.py), observed exactly like the quasars; same interface,
params["spectype"] in CLASSES. docs/simulator-classes.md.
"""

from fnet.simulate.mixture import CLASSES, MixConfig, SpectrumMixSimulator
from fnet.simulate.sdss_writer import write_simulated_set, write_spec_fits
from fnet.simulate.simulator import QuasarSimulator, SimulatedBatch, SimulatorConfig, draw_redshifts, to_spectra

__all__ = [
    "CLASSES",
    "MixConfig",
    "SpectrumMixSimulator",
    "QuasarSimulator",
    "SimulatedBatch",
    "SimulatorConfig",
    "draw_redshifts",
    "to_spectra",
    "write_spec_fits",
    "write_simulated_set",
]
