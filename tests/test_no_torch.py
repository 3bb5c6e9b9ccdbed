"""The runtime must work where torch cannot be imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import PROJECT_ROOT, require_shared
from tiny_models import make_tiny_model

BLOCKER = "raise ImportError('torch is deliberately unavailable in this test')\n"


def test_fnet_run_works_with_torch_import_blocked(tmp_path):
    spec_dir = require_shared("sdss", "dr16")
    blocked = tmp_path / "blocked"
    (blocked / "torch").mkdir(parents=True)
    (blocked / "torch" / "__init__.py").write_text(BLOCKER)
    model = make_tiny_model(tmp_path / "tiny.onnx", {"kind": "zbins", "output": "logits", "spacing": "log1p",
                                                      "z_min": 0.0, "z_max": 7.0, "nbins": 64})
    out = tmp_path / "cat.fits"
    script = (
        "import sys\n"
        "try:\n    import torch\nexcept ImportError:\n    pass\nelse:\n    sys.exit('torch imported')\n"
        "from fnet.cli import run_command\n"
        f"run_command([{str(spec_dir / 'spec-3655-55240-00*.fits')!r}, '--model', {str(model)!r}, "
        f"'-o', {str(out)!r}, '--quiet'])\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocked), str(PROJECT_ROOT)]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "0 failed" in proc.stderr
    fft = script.replace("'--quiet'])", "'--quiet', '--backend', 'fft'])")  # the FFT backend is torch-free too
    proc = subprocess.run([sys.executable, "-c", fft], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "fft[numpy" in proc.stderr, proc.stderr


def test_runtime_modules_do_not_import_torch():
    code = ("import sys, pkgutil, importlib, fnet.runtime\n"
            "for m in pkgutil.walk_packages(fnet.runtime.__path__, 'fnet.runtime.'):\n"
            "    importlib.import_module(m.name)\n"
            "import fnet.cli, fnet.metrics\n"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
            "sys.exit(f'torch imported: {bad[:3]}' if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)))
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_no_torch_import_statement_in_runtime_sources():
    offenders = [str(p) for p in Path(PROJECT_ROOT, "fnet", "runtime").rglob("*.py")
                 if any(line.strip().startswith(("import torch", "from torch")) for line in p.read_text().splitlines())]
    assert offenders == []
