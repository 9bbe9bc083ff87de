"""The wheel ships both top-level packages (``libra_fx`` and ``passes``) and the default image."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_passes_and_assets(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("libra_fx-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "passes/__init__.py" in names and "passes/sdpa_attention.py" in names
    assert "libra_fx/assets/default.png" in names
    assert not any(name.startswith("tests/") for name in names)
