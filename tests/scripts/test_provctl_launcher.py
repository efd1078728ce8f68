"""scripts/provctl-launcher: provctl as ``python -I -S`` on the package the venv holds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "scripts" / "provctl-launcher"
SITE = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


def make_venv(where: Path) -> Path:
    """A venv (no pip) holding a copy of provisiond's package, as pip would install it."""
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    shutil.copytree(REPO / "daemon", venv / SITE / "daemon",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (venv / "bin" / "provctl").write_text("pip's console script\n")
    return venv


def test_the_launcher_runs_the_venvs_package_isolated_and_without_site(tmp_path):
    venv = make_venv(tmp_path)

    # run from the checkout, as ./dev install does: the checkout's package is not the one
    subprocess.run([str(LAUNCHER), str(venv)], cwd=REPO, check=True, timeout=120)

    text = (venv / "bin" / "provctl").read_text()
    assert text.splitlines()[0] == f"#!{venv}/bin/python -IS"
    assert f"sys.path.append({str(venv / SITE)!r})" in text and repr(str(REPO)) not in text
    probe = tmp_path / "nowhere.sock"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "elsewhere")}
    result = subprocess.run([str(venv / "bin" / "provctl"), "--socket", str(probe), "delete",
                             "ID", "--wait"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=60)
    assert (result.returncode, result.stdout) == (4, "")
    assert result.stderr == (f"provctl: cannot reach provisiond at {probe}: No such file or "
                             "directory (is the daemon running? see --socket)\n")

    # run again (after a pip install put its script back): written again; unchanged: kept
    (venv / "bin" / "provctl").write_text("pip's console script\n")
    subprocess.run([str(LAUNCHER), str(venv)], check=True, timeout=120)
    assert (venv / "bin" / "provctl").read_text() == text
    before = os.stat(venv / "bin" / "provctl").st_mtime_ns
    subprocess.run([str(LAUNCHER), str(venv)], check=True, timeout=120)
    assert os.stat(venv / "bin" / "provctl").st_mtime_ns == before


def test_a_venv_whose_path_a_shebang_cannot_hold_keeps_pips_script(tmp_path):
    spaced = tmp_path / "with space"
    spaced.mkdir()
    venv = make_venv(spaced)

    result = subprocess.run([str(LAUNCHER), str(venv)], capture_output=True, text=True,
                            check=True, timeout=120)

    assert "has a space: pip's provctl kept" in result.stderr
    assert (venv / "bin" / "provctl").read_text() == "pip's console script\n"
