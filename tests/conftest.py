from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers.common import FakeDaemon, write_jsonl  # noqa: F401  (fixtures below use them)

from trainer.config import Config, SpoolConfig, default_config_toml
from trainer.spool.layout import Layout, init_base


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    base, _ = init_base(tmp_path / "base", default_config_toml())
    return base


@pytest.fixture
def limits() -> SpoolConfig:
    return Config().spool


@pytest.fixture
def chat_file(tmp_path: Path):
    counter = iter(range(10**6))

    def make(records: int = 3, name: str | None = None) -> Path:
        n = next(counter)
        rows = [{"messages": [{"role": "user", "content": f"q{n}.{i}"},
                              {"role": "assistant", "content": f"a{n}.{i}"}]} for i in range(records)]
        return write_jsonl(tmp_path / (name or f"chat{n}.jsonl"), rows)

    return make


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
