from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from trainer.config import Config, SpoolConfig, default_config_toml
from trainer.spool.layout import Layout, init_base

REPO = Path(__file__).resolve().parent.parent
FAKE_DAEMON = Path(__file__).resolve().parent / "fake_daemon.py"


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    base, _ = init_base(tmp_path / "base", default_config_toml())
    return base


@pytest.fixture
def limits() -> SpoolConfig:
    return Config().spool


def write_jsonl(path: Path, records: list) -> Path:
    with open(path, "wb") as fh:
        for record in records:
            fh.write(orjson.dumps(record) + b"\n")
    return path


@pytest.fixture
def chat_file(tmp_path: Path):
    counter = iter(range(10**6))

    def make(records: int = 3, name: str | None = None) -> Path:
        n = next(counter)
        rows = [{"messages": [{"role": "user", "content": f"q{n}.{i}"},
                              {"role": "assistant", "content": f"a{n}.{i}"}]} for i in range(records)]
        return write_jsonl(tmp_path / (name or f"chat{n}.jsonl"), rows)

    return make


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


@pytest.fixture
def fake_daemon():
    started: list[FakeDaemon] = []

    def start(base: Path, *args: str) -> FakeDaemon:
        daemon = FakeDaemon(base, *args)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def open_layout():
    """An initialised base dir whose parents any user can traverse (pytest's tmp_path is
    private to its owner), for tests that act as another user."""
    import shutil
    import tempfile

    parent = Path(tempfile.mkdtemp(prefix="trainer-test-"))
    os.chmod(parent, 0o755)
    base, _ = init_base(parent / "base", default_config_toml())
    yield base
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory):
    """The tiny demo model, built once for the whole session (tests copy it, never change it)."""
    from trainer.train.demo_model import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("demo") / "base")


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
    group_arg = f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"
    return ["setpriv", f"--reuid={uid}", f"--regid={uid if gid is None else gid}", group_arg]


@pytest.fixture
def small_tmpfs(tmp_path):
    """small_tmpfs("160m"): a real, small filesystem to fill (needs root), always unmounted."""
    import shutil

    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("needs root and mount to mount a small tmpfs")
        path = tmp_path / f"small{len(mounted)}"
        path.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode != 0:
            pytest.skip("mounting a tmpfs is not permitted here")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=True)
