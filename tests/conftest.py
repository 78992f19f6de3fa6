from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from trainer.config import Config, SpoolConfig, default_config_toml
from trainer.layout import Layout, init_base

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
