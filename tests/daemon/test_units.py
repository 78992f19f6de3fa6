"""The unit files as systemd's own tools judge them, and the install command, without booting
anything (test_systemd.py runs them under a real systemd)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.common import REPO

from trainer.config import load_config
from trainer.daemon import units

UNITS = REPO / "systemd"
MAX_EXPOSURE = 2.0

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


@pytest.fixture
def rendered(tmp_path):
    """The units as installed: @VENV@ filled in with this venv (verify checks ExecStart exists)."""
    out = tmp_path / "units"
    out.mkdir()
    for name in units.UNITS:
        (out / name).write_text(units.render_unit((UNITS / name).read_text(), Path(sys.prefix)))
    return out


@needs_analyze
@pytest.mark.parametrize("name", ["trainer.service", "trainer@0.service"])
def test_systemd_analyze_verify_prints_nothing(rendered, name):
    if "@0" in name:  # verify a concrete instance of the template
        shutil.copy(rendered / "trainer@.service", rendered / name)
    result = subprocess.run(["systemd-analyze", "verify", str(rendered / name)], capture_output=True, text=True)
    # verify exits 0 on unknown keys and unparsable values: any output at all is a failure.
    assert result.returncode == 0 and result.stderr == "" and result.stdout == "", result.stderr


@needs_analyze
@pytest.mark.parametrize("name", ["trainer.service", "trainer@.service"])
def test_exposure_is_at_most_2(rendered, name):
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(rendered / name)],
                            capture_output=True, text=True)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def _directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_the_template_is_the_service_plus_the_instance_lines():
    """The two units are kept apart for readers; this keeps them from drifting apart."""
    service = _directives((UNITS / "trainer.service").read_text())
    template = _directives((UNITS / "trainer@.service").read_text())
    per_instance = {"CUDA_VISIBLE_DEVICES", "LogExtraFields", "Description"}
    normalised = [line.replace("trainer-%i", "trainer") for line in template
                  if not any(key in line for key in per_instance)]
    assert normalised == [line for line in service if not line.startswith("Description=")]
    assert "Environment=CUDA_VISIBLE_DEVICES=%i" in template
    assert "LogExtraFields=TRAINER_INSTANCE=%i" in template


def test_hardening_leaves_out_what_breaks_pytorch_and_psutil():
    for name in units.UNITS:
        directives = _directives((UNITS / name).read_text())
        assert not any(d.startswith("MemoryDenyWriteExecute=") for d in directives)  # oneDNN JIT
        assert not any(d.startswith("ProcSubset=") for d in directives)  # /proc/meminfo
        assert "KillMode=mixed" in directives and "NotifyAccess=all" in directives
        prevent = next(d for d in directives if d.startswith("RestartPreventExitStatus="))
        assert set(prevent.split("=", 1)[1].split()) == {"2", "73", "78"}


def test_the_example_config_is_valid():
    config = load_config(UNITS / "config.example.toml")
    assert config.model.lora and config.daemon.min_free_bytes == 10 * 2**30


def test_install_unit_into_a_root_fills_in_the_venv_and_keeps_an_existing_config(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name in ("trainer", "trainctl"):
        (venv / "bin" / name).write_text("#!/bin/sh\n")
        (venv / "bin" / name).chmod(0o755)
    (venv / "bin" / "python").symlink_to("/usr/bin/env")
    root = tmp_path / "root"
    said: list[str] = []
    units.install(root=root, venv=venv, source=UNITS, say=said.append)
    unit = (root / "etc/systemd/system/trainer.service").read_text()
    assert f"ExecStart={venv}/bin/trainer run" in unit and "@VENV@" not in unit
    assert (root / "etc/sysusers.d/trainer.conf").read_text().startswith("#")
    config = root / "etc/trainer/config.toml"
    config.write_text("[train]\nlearning_rate = 0.5\n")
    units.install(root=root, venv=venv, source=UNITS, say=said.append)
    assert config.read_text() == "[train]\nlearning_rate = 0.5\n"
    assert any(line.startswith("kept") for line in said)
    assert any("not touching the running system" in line for line in said)


def test_install_unit_refuses_a_venv_the_unit_could_not_see(tmp_path):
    with pytest.raises(units.InstallError, match="ProtectHome"):
        units.check_venv_location(Path("/home/alice/venv"), Path("/usr/bin/python3"))
    with pytest.raises(units.InstallError, match="ProtectHome"):
        units.check_venv_location(Path("/opt/trainer"), Path("/root/.pyenv/versions/3.11.7/bin/python3.11"))
    units.check_venv_location(Path("/opt/trainer"), Path("/usr/bin/python3.11"))
