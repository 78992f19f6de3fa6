"""Helpers the tests share: the checkout, trainctl as a subprocess, another user, a fake daemon."""

from __future__ import annotations

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
    file modes, so this is how a test makes permissions really apply."""
    closed = closed_to_other_users(REPO)
    if closed is not None:
        import pytest

        pytest.skip(f"{closed} (mode {closed.stat().st_mode & 0o777:04o}) is closed to other users, so a command run "
                    f"as another user cannot import the checkout: clone under a directory others can traverse "
                    f"(or chmod o+x {closed}) to run this test")
    group_arg = f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"
    return ["setpriv", f"--reuid={uid}", f"--regid={uid if gid is None else gid}", group_arg]


def closed_to_other_users(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that other users cannot traverse (None: all can)."""
    for directory in [*reversed(path.resolve().parents), path.resolve()]:
        if not directory.stat().st_mode & 0o001:
            return directory
    return None
