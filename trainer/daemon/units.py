"""Putting the systemd units in place: `trainctl install-unit`.

What is installed (under ``root``, "/" for real):

    etc/systemd/system/trainer.service     the units, with the venv's path filled in
    etc/systemd/system/trainer@.service
    etc/sysusers.d/trainer.conf            the trainer user and group
    etc/trainer/config.toml                the example config, only if there is none

Then, on the running system only: systemd-sysusers creates the user, and systemctl
daemon-reload makes systemd see the units. Nothing is enabled or started: the command prints
what to run next. Re-running it updates the units and never touches an existing config.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import InstallError, NeedsRoot
from trainer.spool.fsutil import write_atomic

VENV_PLACEHOLDER = "@VENV@"
UNITS = ("trainer.service", "trainer@.service")
ENTRY_POINTS = ("trainer", "trainctl")  # what ExecStartPre/ExecStart run from the venv


@dataclass(frozen=True)
class Placement:
    source: Path
    target: Path  # relative to the root
    text: str
    replace: bool  # False: an existing file is the user's and is kept
    mode: int = 0o644


def units_source() -> Path:
    """The unit files shipped in the package (a wheel), else the checkout's systemd/ (an
    editable install, or running from the checkout)."""
    packaged = Path(str(importlib.resources.files("trainer.daemon") / "unit_files"))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "systemd"


def render_unit(text: str, venv: Path) -> str:
    if VENV_PLACEHOLDER not in text:
        raise InstallError(f"the unit has no {VENV_PLACEHOLDER} to fill in: is it the project's unit file?")
    return text.replace(VENV_PLACEHOLDER, str(venv))


# ProtectHome=yes makes these invisible to the daemon: an interpreter or venv there cannot run.
HIDDEN_BY_PROTECT_HOME = (Path("/home"), Path("/root"), Path("/run/user"))


def hidden_from_service(path: Path) -> bool:
    return any(path == hidden or hidden in path.parents for hidden in HIDDEN_BY_PROTECT_HOME)


def check_venv(venv: Path) -> None:
    for name in ENTRY_POINTS:
        if not os.access(venv / "bin" / name, os.X_OK):
            raise InstallError(f"{venv}/bin/{name}: missing: install the project into that venv first "
                               f"({venv}/bin/pip install PATH_TO_CHECKOUT), or pass --venv")
    check_venv_location(venv.resolve(), (venv / "bin" / "python").resolve())


def check_venv_location(venv: Path, interpreter: Path) -> None:
    for path in (venv, interpreter):
        if hidden_from_service(path):
            raise InstallError(
                f"{path}: under a home directory, which the unit's ProtectHome=yes hides from the daemon: "
                f"make the venv elsewhere with a system Python (python3 -m venv /opt/trainer; "
                f"/opt/trainer/bin/pip install PATH_TO_CHECKOUT) and pass --venv /opt/trainer")


def plan(source: Path, venv: Path) -> list[Placement]:
    """What goes where; pure apart from reading the source files."""
    if not source.is_dir():
        raise InstallError(f"{source}: the unit files are not there: reinstall the package "
                           f"(pip install PATH_TO_CHECKOUT) or pass --units DIR (a checkout's systemd/ directory)")
    placements = [Placement(source / name, Path("etc/systemd/system") / name,
                            render_unit((source / name).read_text(), venv), replace=True) for name in UNITS]
    placements.append(Placement(source / "trainer.sysusers", Path("etc/sysusers.d/trainer.conf"),
                                (source / "trainer.sysusers").read_text(), replace=True))
    placements.append(Placement(source / "config.example.toml", Path("etc/trainer/config.toml"),
                                (source / "config.example.toml").read_text(), replace=False))
    return placements


def place(root: Path, placements: list[Placement], say) -> None:
    for p in placements:
        target = root / p.target
        if target.exists() and not p.replace:
            say(f"kept      {target} (already there)")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        verb = "updated  " if target.exists() else "installed"
        # Staged in the target's own directory so that the rename is atomic.
        write_atomic(target.parent, target, p.text.encode(), mode=p.mode)
        say(f"{verb} {target}")


def activate(root: Path, say) -> None:
    """On the live system: create the user, make systemd re-read its units."""
    if root != Path("/"):
        say(f"not touching the running system (--root {root}): run systemd-sysusers and "
            f"systemctl daemon-reload there")
        return
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        say("systemd-sysusers not found: create the user yourself: "
            "useradd --system --home-dir /var/lib/trainer --shell /usr/sbin/nologin trainer")
    else:
        _run([sysusers, "/etc/sysusers.d/trainer.conf"], say)
    if Path("/run/systemd/system").is_dir():  # sd_booted(): systemd is PID 1
        _run(["systemctl", "daemon-reload"], say)
    else:
        say("systemd is not running here: the units take effect at the next boot")


def _run(argv: list[str], say) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise InstallError(f"{' '.join(argv)} failed (exit {result.returncode}): {result.stderr.strip()}")
    say(f"ran       {' '.join(argv)}")


def install(*, root: Path, venv: Path, source: Path, say=print) -> None:
    check_venv(venv)
    placements = plan(source, venv)
    if root == Path("/") and os.geteuid() != 0:
        raise NeedsRoot("installing into /etc needs root: run it with sudo (or pass --root DIR to stage the files)")
    place(root, placements, say)
    activate(root, say)
