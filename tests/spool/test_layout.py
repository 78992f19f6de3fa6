"""The base dir: init is idempotent and safe, format and filesystem are checked."""

from __future__ import annotations

import os
import shutil

import pytest
from helpers.common import write_jsonl

from trainer.config import default_config_toml
from trainer.errors import FormatMismatch, LayoutError, NotABaseDir
from trainer.intake import enqueue
from trainer.spool import queue
from trainer.spool.layout import Layout, init_base, open_base, open_plain
from trainer.states import ItemState, Priority


def test_init_creates_the_layout_and_rerunning_touches_nothing(tmp_path, limits):
    layout, created = init_base(tmp_path / "b", default_config_toml())
    assert created
    for path in layout.spool_dirs():
        assert path.is_dir() and (os.stat(path).st_mode & 0o7777) == 0o2770
    layout.config_file.write_text("[spool]\nmax_attempts = 7\n")
    src = write_jsonl(tmp_path / "x.jsonl", [{"text": "a"}])
    item_id = enqueue.enqueue(layout, src, limits=limits).id
    again, created = init_base(tmp_path / "b", default_config_toml())
    assert not created
    assert layout.config_file.read_text() == "[spool]\nmax_attempts = 7\n", "never overwrites the config"
    assert queue.find(again, item_id).meta.records == 1


def test_init_repairs_a_missing_spool_dir(tmp_path):
    layout, _ = init_base(tmp_path / "b", default_config_toml())
    shutil.rmtree(layout.tmp)
    with pytest.raises(LayoutError, match="missing"):
        open_base(layout.root)
    init_base(layout.root, default_config_toml())
    open_base(layout.root)


def test_not_a_base_dir_says_how_to_make_one(tmp_path):
    with pytest.raises(NotABaseDir, match="trainctl --base-dir .* init"):
        open_base(tmp_path / "absent")
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotABaseDir, match="no FORMAT"):
        open_base(tmp_path / "plain")


@pytest.mark.parametrize("content", [b'{"format": "trainer-base", "version": 3}', b'{"format": "other", "version": 2}',
                                     b"\x00\x01garbage", b"[1, 2]"])
def test_format_mismatch_is_refused_with_a_clear_error(tmp_path, content):
    layout, _ = init_base(tmp_path / "b", default_config_toml())
    layout.format_file.write_bytes(content)
    with pytest.raises(FormatMismatch):
        open_base(layout.root)
    with pytest.raises(FormatMismatch):
        init_base(layout.root, default_config_toml())


def test_a_spool_dir_replaced_by_a_symlink_is_refused(tmp_path):
    layout, _ = init_base(tmp_path / "b", default_config_toml())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    layout.inbox.rmdir()
    os.symlink(elsewhere, layout.inbox)
    with pytest.raises(LayoutError, match="not a directory"):
        open_base(layout.root)


def test_plain_layout_names_every_path_as_layout_does(tmp_path, monkeypatch):
    layout, _ = init_base(tmp_path / "b", default_config_toml())
    monkeypatch.chdir(tmp_path)
    plain = open_plain("b/")  # relative, as typed: made absolute like open_base's
    assert plain.root == str(layout.root)
    paths = [name for name, member in vars(Layout).items() if isinstance(member, property)]
    assert len(paths) > 20
    for name in paths:  # a property written as `self.root / ...` would fail here on a str root
        assert getattr(plain, name) == str(getattr(layout, name)), name
    assert plain.item_dirs() == [str(p) for p in layout.item_dirs()]
    assert plain.spool_dirs() == [str(p) for p in layout.spool_dirs()]
    assert plain.state_dir(ItemState.PENDING, Priority.LOW) == str(layout.pending(Priority.LOW))
    assert plain.control_file("pause.json") == str(layout.control_file("pause.json"))
    assert plain.file_index("ab") == str(layout.file_index("ab"))


def test_open_plain_refuses_what_open_base_refuses(tmp_path):
    with pytest.raises(NotABaseDir, match="trainctl --base-dir .* init"):
        open_plain(str(tmp_path / "absent"))
    layout, _ = init_base(tmp_path / "b", default_config_toml())
    layout.format_file.write_bytes(b"[1, 2]")
    with pytest.raises(FormatMismatch):
        open_plain(str(layout.root))
    init_base(tmp_path / "c", default_config_toml())
    shutil.rmtree(tmp_path / "c" / "run")
    with pytest.raises(LayoutError, match="missing"):
        open_plain(str(tmp_path / "c"))


def _can_bind_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.mark.skipif(not _can_bind_mount(), reason="needs root and mount(8) to put a spool dir on another filesystem")
def test_a_spool_dir_on_another_filesystem_is_refused(tmp_path):
    import subprocess

    layout, _ = init_base(tmp_path / "b", default_config_toml())
    done = layout.root / "done"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(done)]).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        with pytest.raises(LayoutError, match="another filesystem"):
            open_base(layout.root)
    finally:
        subprocess.run(["umount", str(done)], check=True)
