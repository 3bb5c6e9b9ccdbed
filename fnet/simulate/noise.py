"""Noise and mask vectors: real BOSS ivar/and_mask/sky placed on the simulation grid, or a synthetic fallback.

Real vectors keep everything that makes real data awkward: zero-ivar pixels, the wavelength shape of the noise
(throughput, dichroic, sky lines) and the pipeline's and_mask bits, including odd cases such as a file whose
BADFLAT bit is set on nearly every pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fnet.simulate.realdata import RealSpectrum

# SDSS spPixMask bits used here
NEARBADPIXEL, LOWFLAT, FULLREJECT, PARTIALREJECT, BRIGHTSKY, NODATA = 16, 17, 18, 19, 23, 24

# Bright night-sky lines (vacuum Å, relative peak in 1e-17 erg/s/cm²/Å): [O I], Na D, [O I] 6300/6364 and the
# strongest OH Meinel-band lines; positions approximate (synthetic fallback only).
SKY_LINES = (
    (5578.9, 250), (5891.6, 40), (5897.6, 40), (6302.0, 90), (6365.5, 30), (6865.0, 40), (6925.3, 30),
    (7278.4, 30), (7318.2, 60), (7342.0, 60), (7371.3, 50), (7402.4, 40), (7716.1, 40), (7752.8, 70),
    (7796.2, 60), (7823.4, 70), (7856.3, 60), (7916.0, 90), (7966.9, 70), (7995.6, 80), (8001.4, 70),
    (8062.6, 40), (8290.3, 40), (8346.1, 120), (8401.4, 110), (8432.4, 90), (8467.5, 100), (8507.0, 80),
    (8763.9, 70), (8829.5, 150), (8888.8, 140), (8922.6, 90), (8945.8, 110), (8961.5, 120), (8990.9, 100),
    (9003.2, 80), (9040.8, 60), (9378.0, 100), (9442.0, 180), (9794.0, 150), (9874.1, 160), (9916.0, 120),
    (10013.0, 100), (10086.0, 120), (10126.0, 100), (10289.0, 130), (10375.0, 140),
)


def _sky_continuum(sky: np.ndarray, block: int = 50) -> np.ndarray:
    """Smooth sky continuum under the lines: block medians interpolated back to every pixel (rows of sky)."""
    v, m = sky.shape
    nblk = m // block
    med = np.median(sky[:, : nblk * block].reshape(v, nblk, block), axis=2)
    centres = np.arange(nblk) * block + (block - 1) / 2.0
    x = np.arange(m)
    return np.stack([np.interp(x, centres, row) for row in med])


@dataclass
class NoiseLibrary:
    """Per-pixel noise/mask vectors on the simulation grid (one row per real or synthetic observation)."""

    ivar: np.ndarray  # (V, m) float32, 0 where the file has no pixel
    and_mask: np.ndarray  # (V, m) int32, NODATA where the file has no pixel
    sky: np.ndarray  # (V, m) float32 sky spectrum, 1e-17 erg/s/cm²/Å
    sky_lines: np.ndarray  # (V, m) float32 sky minus its smooth continuum (>= 0): where sky residuals appear
    present: np.ndarray  # (V, m) bool, pixel exists in the source file
    names: list[str]
    kind: str  # "real" or "synthetic"

    def __post_init__(self) -> None:
        self.sky_lines_d1 = np.gradient(self.sky_lines, axis=1).astype(np.float32)
        self.sky_lines_d2 = np.gradient(self.sky_lines_d1, axis=1).astype(np.float32)

    def __len__(self) -> int:
        return self.ivar.shape[0]

    @classmethod
    def from_real(cls, spectra: list[RealSpectrum], k0: int, m: int) -> "NoiseLibrary":
        """Place real BOSS ivar, and_mask and sky vectors on the lattice grid starting at k0."""
        v = len(spectra)
        ivar = np.zeros((v, m), np.float32)
        mask = np.full((v, m), 1 << NODATA, np.int32)
        sky = np.zeros((v, m), np.float32)
        present = np.zeros((v, m), bool)
        for i, s in enumerate(spectra):
            j = s.k - k0
            ok = (j >= 0) & (j < m)
            good = np.isfinite(s.ivar[ok]) & (s.ivar[ok] >= 0)
            ivar[i, j[ok]] = np.where(good, s.ivar[ok], 0.0)
            mask[i, j[ok]] = s.and_mask[ok]
            sky[i, j[ok]] = np.nan_to_num(s.sky[ok])
            present[i, j[ok]] = True
        lines = np.clip(sky - _sky_continuum(sky), 0.0, None).astype(np.float32)
        return cls(ivar, mask, sky, lines, present, [s.path.name for s in spectra], "real")

    @classmethod
    def synthetic(cls, loglam: np.ndarray, rng: np.random.Generator, count: int = 64) -> "NoiseLibrary":
        """BOSS-like vectors from a smooth throughput, a sky continuum + line list, and random pipeline bits."""
        lam = 10.0 ** np.asarray(loglam)
        m = len(lam)
        sig = 1.0 / (1.0 + np.exp(-(lam - 3700.0) / 120.0)) / (1.0 + np.exp(-(9900.0 - lam) / 300.0))
        through = 0.3 * sig * (1.0 - 0.35 * np.exp(-0.5 * ((lam - 6000.0) / 90.0) ** 2))
        sky_cont = 1.5 + 3.0 * (np.clip(lam - 3500.0, 0.0, None) / 6900.0) ** 1.5
        dlam = lam * np.log(10.0) * 1e-4  # pixel width in Å
        line_shape = np.zeros(m)
        for c, peak in SKY_LINES:
            sigma = 1.1 * np.interp(c, lam, dlam)
            line_shape += peak * np.exp(-0.5 * ((lam - c) / sigma) ** 2)
        ivar = np.zeros((count, m), np.float32)
        mask = np.zeros((count, m), np.int32)
        sky = np.zeros((count, m), np.float32)
        for i in range(count):
            s = sky_cont * np.exp(0.3 * rng.standard_normal()) + line_shape * np.exp(0.3 * rng.standard_normal())
            t = through * (lam / 6000.0) ** (0.3 * rng.standard_normal())
            depth = 60.0 * np.exp(0.3 * rng.standard_normal())
            iv = depth * t / (s * t + 0.02)
            bits = np.zeros(m, np.int64)
            bits[line_shape > 0.25 * sky_cont] |= 1 << BRIGHTSKY
            bits[(lam < 3650) | (lam > 10250)] |= (rng.random() < 0.3) << LOWFLAT
            for _ in range(rng.poisson(3)):  # short stretches near bad CCD columns
                a = rng.integers(0, m)
                bits[a : a + rng.integers(3, 20)] |= 1 << NEARBADPIXEL
            rej = rng.random(m) < 0.003
            bits[rej] |= 1 << PARTIALREJECT
            dead = rng.random(m) < 0.0015
            bits[dead] |= 1 << FULLREJECT
            iv[dead] = 0.0
            ivar[i], mask[i], sky[i] = iv, bits.astype(np.int32), s
        lines = np.clip(sky - _sky_continuum(sky), 0.0, None).astype(np.float32)
        present = np.ones((count, m), bool)
        return cls(ivar, mask, sky, lines, present, [f"synthetic-{i}" for i in range(count)], "synthetic")
