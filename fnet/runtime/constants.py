"""Physical and survey constants used across the toolkit, defined once."""

#: Speed of light in km/s (exact, SI): Δv = C_KMS · Δz / (1 + z).
C_KMS = 299792.458

#: The paper's input grid: 4618 pixels uniform in log10(λ/Å) from 3.5522 at the BOSS step 1e-4 dex
#: (3566.7–10325 Å). Models carry their own grid in their package; this is only the training default.
PAPER_GRID: dict = {"loglam_start": 3.5522, "loglam_step": 1e-4, "npix": 4618}

#: Exit codes of the fnet-* commands: everything done; some inputs or artefacts failed (each reported); refused before
#: starting (usage, model, output); nothing could be produced (no catalog, an artefact that cannot be built).
EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_NO_CATALOG = 0, 1, 2, 3
