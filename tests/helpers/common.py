"""Helpers the tests share: the checkout, trainctl as a subprocess, another user, a fake daemon."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[2]
FAKE_DAEMON = Path(__file__).resolve().parent / "fake_daemon.py"


def write_jsonl(path: Path, records: list) -> Path:
    with open(path, "wb") as fh:
        for record in records:
            fh.write(orjson.dumps(record) + b"\n")
    return path


def trainctl(base: Path, *args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real trainctl in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "ctl", "--base-dir", str(base), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env={**os.environ, **(env or {})},
    )


class FakeDaemon:
    """A real process holding the real daemon lock and heartbeating (see fake_daemon.py)."""

    def __init__(self, base: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(FAKE_DAEMON), str(base), *args],
                                     stdout=subprocess.PIPE, text=True, cwd=REPO)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", line

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()


def unprivileged_ids() -> tuple[int, int]:
    """uid and gid of an unprivileged user (nobody), for tests that need file modes to apply."""
    import grp
    import pwd

    try:
        user = pwd.getpwnam("nobody")
        return user.pw_uid, user.pw_gid
    except KeyError:
        try:
            return 65534, grp.getgrnam("nogroup").gr_gid
        except KeyError:
            return 65534, 65534


def as_user(uid: int, gid: int | None = None, groups: tuple[int, ...] = ()) -> list[str]:
    """argv prefix running a command as another user (needs root and setpriv): root ignores
    file modes, so this is how a test makes permissions really apply. Put ``OTHERS_PYTHON()``
    after it, not ``sys.executable``: where the checkout sits under a directory other users
    cannot traverse (a ``mktemp -d`` parent), they run a readable copy of it instead.

    Nothing may come between setpriv and the program: setpriv still holds root's
    capabilities when it execs it (a Python under /root is reached that way), a program in
    between (env) would not."""
    group_arg = f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"
    return ["setpriv", f"--reuid={uid}", f"--regid={uid if gid is None else gid}", group_arg]


def OTHERS_PYTHON() -> str:  # noqa: N802  (read as a constant where a command is spelled out)
    """The Python another user can run with this checkout importable (see ``as_user``)."""
    copy = readable_checkout()
    return sys.executable if copy is None else str(copy / VENV_COPY / Path(sys.executable).relative_to(sys.prefix))


VENV_COPY = "venv"


@functools.cache
def readable_checkout() -> Path | None:
    """None where other users can reach the checkout; otherwise a copy of its packages and of
    the venv in a fresh world-readable directory, made of hard links (no data is copied; the
    files keep their own modes), removed at exit. The copied venv finds the copied packages
    through a .pth file in place of the editable install's, which names the checkout."""
    closed = closed_to_other_users(REPO)
    if closed is None:
        return None
    import atexit
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="trainer-tests-readable-", dir="/tmp"))
    atexit.register(shutil.rmtree, root, True)
    os.chmod(root, 0o755)
    try:
        for name in ("trainer", "ctl"):
            shutil.copytree(REPO / name, root / name, symlinks=True, copy_function=os.link)
        shutil.copytree(sys.prefix, root / VENV_COPY, symlinks=True, copy_function=os.link)
        for site in (root / VENV_COPY).glob("lib/python*/site-packages"):
            for pth in site.glob("*.pth"):
                if str(REPO) in pth.read_text(errors="replace"):
                    pth.unlink()  # a link in the copy: the venv's own file stays
            (site / "readable-checkout.pth").write_text(f"{root}\n")
    except OSError as exc:  # another filesystem (no hard links across): say how to run them
        import pytest

        pytest.skip(f"{closed} (mode {closed.stat().st_mode & 0o777:04o}) is closed to other users and a "
                    f"readable copy could not be linked in /tmp ({exc.strerror}): clone under a directory "
                    f"others can traverse (or chmod o+x {closed}) to run this test")
    return root


def closed_to_other_users(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that other users cannot traverse (None: all can)."""
    for directory in [*reversed(path.resolve().parents), path.resolve()]:
        if not directory.stat().st_mode & 0o001:
            return directory
    return None
