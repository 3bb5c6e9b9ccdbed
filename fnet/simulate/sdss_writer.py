"""Write simulated spectra as genuine BOSS-format spec-PLATE-MJD-FIBER.fits files, clearly flagged SIMULATD = T."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

COADD_ARRAYS = ("or_mask", "wdisp", "sky", "model")
SIM_COMMENT = "SIMULATED spectrum written by fnet.simulate: not real SDSS data"


def spec_filename(plate: int, mjd: int, fiberid: int) -> str:
    """BOSS file name spec-PLATE-MJD-FIBER.fits (4/5/4 digits)."""
    return f"spec-{int(plate):04d}-{int(mjd):05d}-{int(fiberid):04d}.fits"


def _flag(header: fits.Header) -> None:
    """Mark a header as simulated."""
    header["SIMULATD"] = (True, "simulated spectrum, not real data")
    header.add_comment(SIM_COMMENT)


def write_spec_fits(
    path: str | Path,
    loglam: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    and_mask: np.ndarray,
    plate: int,
    mjd: int,
    fiberid: int,
    ra: float,
    dec: float,
    z_true: float | None = None,
    extra: dict[str, Any] | None = None,
    spec_class: str = "QSO",
) -> Path:
    """Write one BOSS spec file (path = file, or a folder to put spec-PLATE-MJD-FIBER.fits in); returns its path.

    HDU0 empty with PLATEID/MJD/FIBERID/PLUG_RA/PLUG_DEC; HDU1 COADD with lowercase flux, loglam, ivar, and_mask,
    or_mask, wdisp, sky, model (float32/int32 as BOSS); HDU2 SPALL with PLATE, MJD, FIBERID, PLUG_RA, PLUG_DEC,
    CLASS = spec_class (default 'QSO'; the simulated class for mixed sets) and Z = the simulation's TRUE redshift
    (NaN if not given). extra: arrays named or_mask, wdisp, sky, model fill those COADD columns (defaults:
    and_mask, 1 pixel, 0, 0); other scalar entries become SPALL columns.
    """
    path = Path(path)
    if path.is_dir() or path.suffix.lower() not in (".fits", ".fit"):
        path.mkdir(parents=True, exist_ok=True)
        path = path / spec_filename(plate, mjd, fiberid)
    extra = dict(extra or {})
    loglam = np.asarray(loglam, dtype=np.float64)
    npix = len(loglam)
    arrays = {k: np.asarray(extra.pop(k)) for k in COADD_ARRAYS if k in extra}
    for name, arr in (("flux", flux), ("ivar", ivar), ("and_mask", and_mask), *arrays.items()):
        if np.shape(arr) != (npix,):
            raise ValueError(f"{name} has shape {np.shape(arr)}, loglam has {npix} pixels")

    primary = fits.PrimaryHDU()
    h = primary.header
    h["TELESCOP"] = ("SDSS 2.5-M", "BOSS file layout; data SIMULATED")
    h["PLATEID"] = (int(plate), "plate (simulated)")
    h["MJD"] = (int(mjd), "MJD (simulated)")
    h["FIBERID"] = (int(fiberid), "fiber (simulated)")
    h["PLUG_RA"] = (float(ra), "RA of the simulated object, deg")
    h["PLUG_DEC"] = (float(dec), "Dec of the simulated object, deg")
    h["COEFF0"] = (round(float(loglam[0]), 6), "log10(lambda/A) of pixel 0 (vacuum)")
    h["COEFF1"] = (1e-4, "log10 step per pixel")
    h["VACUUM"] = (True, "vacuum wavelengths")
    h["BUNIT"] = ("1E-17 erg/cm^2/s/Ang", "flux units")
    h["RUN2D"] = ("fnet-sim", "simulation, not a BOSS reduction")
    _flag(h)

    ivar = np.asarray(ivar, dtype=np.float32)
    and_mask = np.asarray(and_mask).astype(np.int32)
    cols = [
        fits.Column("flux", "E", array=np.asarray(flux, dtype=np.float32)),
        fits.Column("loglam", "E", array=loglam.astype(np.float32)),
        fits.Column("ivar", "E", array=ivar),
        fits.Column("and_mask", "J", array=and_mask),
        fits.Column("or_mask", "J", array=arrays.get("or_mask", and_mask).astype(np.int32)),
        fits.Column("wdisp", "E", array=np.asarray(arrays.get("wdisp", np.ones(npix)), dtype=np.float32)),
        fits.Column("sky", "E", array=np.asarray(arrays.get("sky", np.zeros(npix)), dtype=np.float32)),
        fits.Column("model", "E", array=np.asarray(arrays.get("model", np.zeros(npix)), dtype=np.float32)),
    ]
    coadd = fits.BinTableHDU.from_columns(cols, name="COADD")
    coadd.header.add_comment("Coadded spectrum (simulated)")
    _flag(coadd.header)

    z = np.nan if z_true is None else float(z_true)
    meta_cols = [
        fits.Column("PLATE", "J", array=np.array([plate], np.int32)),
        fits.Column("MJD", "J", array=np.array([mjd], np.int32)),
        fits.Column("FIBERID", "J", array=np.array([fiberid], np.int32)),
        fits.Column("PLUG_RA", "D", array=np.array([ra], np.float64)),
        fits.Column("PLUG_DEC", "D", array=np.array([dec], np.float64)),
        fits.Column("CLASS", "6A", array=np.array([str(spec_class)])),
        fits.Column("Z", "E", array=np.array([z], np.float32)),
    ]
    for key, value in extra.items():
        name = str(key).upper()
        if isinstance(value, (str, np.str_)):
            meta_cols.append(fits.Column(name, f"{max(len(value), 1)}A", array=np.array([value])))
        elif isinstance(value, (bool, np.bool_)):
            meta_cols.append(fits.Column(name, "L", array=np.array([bool(value)])))
        elif isinstance(value, (int, np.integer)):
            meta_cols.append(fits.Column(name, "K", array=np.array([int(value)], np.int64)))
        elif isinstance(value, (float, np.floating)):
            meta_cols.append(fits.Column(name, "D", array=np.array([float(value)])))
        else:
            raise TypeError(f"extra[{key!r}]: only COADD arrays {COADD_ARRAYS} or scalars are supported")
    spall = fits.BinTableHDU.from_columns(meta_cols, name="SPALL")
    spall.header.add_comment("Z is the TRUE redshift of the simulation (simulation truth), not a pipeline fit")
    _flag(spall.header)

    fits.HDUList([primary, coadd, spall]).writeto(path, overwrite=True)
    return path


def write_simulated_set(
    out_dir: str | Path,
    n: int,
    seed: int,
    source: str = "auto",
    data_dir: str | Path | None = None,
    z: np.ndarray | None = None,
    z_range: tuple[float, float] = (0.0, 7.0),
    z_dist: str = "uniform",
    plate: int = 15000,
    mjd: int = 61000,
    config=None,
    mix: dict | None = None,
) -> Path:
    """Simulate n quasars, write n spec files (each trimmed to its observed window) and a truth catalog.

    Files: out_dir/spec-PLATE-MJD-FIBER.fits (fibers 1-1000 per plate, plates from `plate` on) and
    out_dir/truth.fits (HDU TRUTH: PLATE, MJD, FIBERID, Z, FILENAME, SOURCE, SNR, MAG, BAL, N_DLA). Returns the
    catalog path.

    mix: None (quasars only, as always), or SpectrumMixSimulator options (e.g. {} for the default class mix,
    {"mix": {"QSO": 0.5, "STAR": 0.5}}): then source/config set its quasar part, each file's SPALL CLASS is the
    simulated class (QSO/STAR/GALAXY) with SIM_SUBTYPE, and the truth table gains SPECTYPE, SUBTYPE and HOST_FRAC.
    """
    from dataclasses import asdict, is_dataclass

    from fnet.simulate.simulator import QuasarSimulator

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if mix is None:
        sim = QuasarSimulator(source=source, data_dir=data_dir, seed=seed, config=config)
    else:
        from fnet.simulate.mixture import SpectrumMixSimulator

        qcfg = asdict(config) if is_dataclass(config) else dict(config or {})
        options = {"quasar_source": source, "quasar": qcfg, **dict(mix)}
        sim = SpectrumMixSimulator(data_dir=data_dir, seed=seed, **options)
    rng = np.random.default_rng([seed, 1])
    zs = None if z is None else np.broadcast_to(np.asarray(z, dtype=np.float64), (n,))
    keys = ("PLATE", "MJD", "FIBERID", "Z", "FILENAME", "SOURCE", "SNR", "MAG", "BAL", "N_DLA")
    if mix is not None:
        keys += ("SPECTYPE", "SUBTYPE", "HOST_FRAC")
    rows: dict[str, list] = {k: [] for k in keys}
    done = 0
    while done < n:
        size = min(256, n - done)
        batch = sim.sample(size, z=None if zs is None else zs[done : done + size], z_range=z_range, z_dist=z_dist)
        ra = rng.uniform(0.0, 360.0, size)
        dec = np.degrees(np.arcsin(rng.uniform(-0.3, 1.0, size)))
        for i in range(size):
            index = done + i
            mixed = {}
            if mix is not None:
                mixed = {"SPECTYPE": str(batch.params["spectype"][i]), "SUBTYPE": str(batch.params["subtype"][i]),
                         "HOST_FRAC": float(batch.params["host_fraction"][i])}
            pl, fib = plate + index // 1000, index % 1000 + 1
            a, b = int(batch.params["pix_start"][i]), int(batch.params["pix_end"][i]) + 1
            p = write_spec_fits(
                out_dir,
                batch.loglam[a:b],
                batch.flux[i, a:b],
                batch.ivar[i, a:b],
                batch.and_mask[i, a:b],
                pl,
                mjd,
                fib,
                ra[i],
                dec[i],
                z_true=float(batch.z[i]),
                extra={
                    "or_mask": batch.and_mask[i, a:b],
                    "wdisp": np.full(b - a, batch.params["wdisp"][i], np.float32),
                    "sky": batch.sky[i, a:b],
                    "model": batch.model[i, a:b],
                    "SIM_SOURCE": str(batch.params["source"][i]),
                    "SIM_SNR": float(batch.params["snr"][i]),
                    **({"SIM_SUBTYPE": mixed["SUBTYPE"] or "-"} if mixed else {}),
                },
                spec_class=mixed.get("SPECTYPE", "QSO"),
            )
            for key, val in (
                ("PLATE", pl), ("MJD", mjd), ("FIBERID", fib), ("Z", float(batch.z[i])), ("FILENAME", p.name),
                ("SOURCE", str(batch.params["source"][i])), ("SNR", float(batch.params["snr"][i])),
                ("MAG", float(batch.params["mag"][i])), ("BAL", bool(batch.params["bal"][i])),
                ("N_DLA", int(batch.params["dla"][i])), *mixed.items(),
            ):
                rows[key].append(val)
        done += size
    cols = [
        fits.Column("PLATE", "J", array=np.array(rows["PLATE"], np.int32)),
        fits.Column("MJD", "J", array=np.array(rows["MJD"], np.int32)),
        fits.Column("FIBERID", "J", array=np.array(rows["FIBERID"], np.int32)),
        fits.Column("Z", "D", array=np.array(rows["Z"])),
        fits.Column("FILENAME", "32A", array=np.array(rows["FILENAME"])),
        fits.Column("SOURCE", "16A", array=np.array(rows["SOURCE"])),
        fits.Column("SNR", "E", array=np.array(rows["SNR"], np.float32)),
        fits.Column("MAG", "E", array=np.array(rows["MAG"], np.float32)),
        fits.Column("BAL", "L", array=np.array(rows["BAL"], bool)),
        fits.Column("N_DLA", "J", array=np.array(rows["N_DLA"], np.int32)),
    ]
    if mix is not None:
        cols += [
            fits.Column("SPECTYPE", "6A", array=np.array(rows["SPECTYPE"])),
            fits.Column("SUBTYPE", "16A", array=np.array(rows["SUBTYPE"])),
            fits.Column("HOST_FRAC", "E", array=np.array(rows["HOST_FRAC"], np.float32)),
        ]
    truth = fits.BinTableHDU.from_columns(cols, name="TRUTH")
    truth.header.add_comment("Z: true redshift of each simulated spectrum (simulation truth)")
    _flag(truth.header)
    primary = fits.PrimaryHDU()
    _flag(primary.header)
    cat = out_dir / "truth.fits"
    fits.HDUList([primary, truth]).writeto(cat, overwrite=True)
    return cat
