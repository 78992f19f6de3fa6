"""The documented install, non-editable: a wheel built from the checkout carries the unit files,
and `trainctl install-unit` from a fresh venv with only that wheel installs them.

The fresh venv is made from the system Python (the README's service section uses one; the
unit refuses interpreters under home directories) and gets the wheel without its torch
dependencies (`install-unit` never imports torch), plus click and orjson from the index.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers.common import REPO

from trainer.daemon import units

SYSTEM_PYTHON = Path("/usr/bin/python3")
SHIPPED = ("trainer.service", "trainer@.service", "trainer.sysusers", "config.example.toml")


def _source_copy(dest: Path) -> Path:
    """The checkout as a fresh clone would have it (no venv, no build/ left in the checkout)."""
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "demo", "*.egg-info", "__pycache__", ".pytest_cache",
                                    ".hypothesis", "unit_files")
    shutil.copytree(REPO, dest, ignore=ignore)
    return dest


def _pip(python: Path, *args: str, cwd: Path) -> None:
    result = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = _source_copy(work / "source")
    _pip(Path(sys.executable), "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(source), cwd=work)
    return next((work / "dist").glob("trainer-*.whl"))


def test_the_wheel_carries_the_unit_files_and_no_tests(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for name in SHIPPED:
        assert f"trainer/daemon/unit_files/{name}" in names
        packaged = zipfile.ZipFile(wheel).read(f"trainer/daemon/unit_files/{name}")
        assert packaged == (REPO / "systemd" / name).read_bytes(), f"{name}: the wheel ships the checkout's file"
    assert not any(n.startswith("tests/") for n in names)


@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason=f"{SYSTEM_PYTHON} is missing (the service venv needs a "
                                                       "Python outside home directories)")
def test_install_unit_works_from_a_fresh_venv_with_only_the_wheel(wheel, tmp_path):
    venv = tmp_path / "opt-trainer"
    made = subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"{SYSTEM_PYTHON} -m venv failed (install python3-venv): {made.stderr.strip()[-200:]}")
    _pip(venv / "bin" / "python", "install", "-q", "--no-deps", str(wheel), "click", "orjson", cwd=tmp_path)
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import trainer; print(trainer.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv), "the package comes from the wheel, not the checkout"
    root = tmp_path / "root"
    result = subprocess.run([str(venv / "bin" / "trainctl"), "install-unit", "--venv", str(venv), "--root", str(root)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    unit = (root / "etc/systemd/system/trainer.service").read_text()
    assert unit == units.render_unit((REPO / "systemd" / "trainer.service").read_text(), venv)
    assert (root / "etc/sysusers.d/trainer.conf").read_bytes() == (REPO / "systemd" / "trainer.sysusers").read_bytes()
    assert (root / "etc/trainer/config.toml").read_bytes() == (REPO / "systemd" / "config.example.toml").read_bytes()
