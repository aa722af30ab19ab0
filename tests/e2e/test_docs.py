"""The documentation site builds in strict mode: a broken link, a missing anchor or a
setting without a description fails the suite; the reference pages come from the code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_the_site_builds_strictly_with_its_generated_reference(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "REFIT_WORKSPACE": str(tmp_path / "ws")}
    built = subprocess.run(
        [str(bin_dir / "mkdocs"), "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    page = (tmp_path / "site" / "reference").joinpath
    assert "REFIT_GATE__MIN_DELTA" in page("settings", "index.html").read_text()
    assert "holdout_leakage" in page("rules", "index.html").read_text()
    assert "/predict_batch" in page("http", "index.html").read_text()
    cli = page("cli", "index.html").read_text()
    assert "data add" in cli and "model register" in cli
