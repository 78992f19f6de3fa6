"""The checkpoint store: atomic saves, verified loads, retention by recorded step."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import orjson
import pytest

from trainer.errors import DiskUnwritable
from trainer.train.checkpoint import LATEST, QUARANTINE, CheckpointStore, verify


def _writer(payload: bytes):
    def write(directory):
        (directory / "weights.bin").write_bytes(payload)
        (directory / "state.json").write_bytes(orjson.dumps({"payload": len(payload)}))
    return write


def test_a_saved_checkpoint_verifies_and_is_named_by_latest(tmp_path):
    store = CheckpointStore(tmp_path / "ck")
    saved = store.save(10, _writer(b"a" * 1000), {"note": "x"})
    assert verify(saved.path).step == 10
    assert (tmp_path / "ck" / LATEST).read_text().strip() == saved.path.name
    assert set(saved.manifest["files"]) == {"weights.bin", "state.json"}
    assert store.latest_valid().path == saved.path


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "delete", "manifest"])
def test_a_damaged_latest_checkpoint_is_quarantined_and_the_previous_used(tmp_path, damage):
    store = CheckpointStore(tmp_path / "ck")
    good = store.save(1, _writer(b"a" * 4096), {})
    bad = store.save(2, _writer(b"b" * 4096), {})
    weights = bad.path / "weights.bin"
    if damage == "truncate":
        os.truncate(weights, 100)
    elif damage == "bitflip":
        data = bytearray(weights.read_bytes())
        data[2000] ^= 0x01
        weights.write_bytes(bytes(data))
    elif damage == "delete":
        weights.unlink()
    else:
        (bad.path / "manifest.json").write_bytes(b"{not json")
    chosen = store.latest_valid()
    assert chosen.path == good.path
    quarantined = os.listdir(tmp_path / "ck" / QUARANTINE)
    assert bad.path.name in quarantined and f"{bad.path.name}.reason" in quarantined


def test_a_save_that_never_wrote_its_manifest_does_not_exist(tmp_path):
    store = CheckpointStore(tmp_path / "ck")
    good = store.save(5, _writer(b"a"), {})
    half = tmp_path / "ck" / "step-000000000006-abcdef"
    half.mkdir()
    (half / "weights.bin").write_bytes(b"partial")
    assert store.latest_valid().path == good.path
    assert not half.exists(), "moved aside"


def test_retention_orders_by_recorded_step_not_by_name_and_keeps_the_latest_two(tmp_path):
    store = CheckpointStore(tmp_path / "ck", keep_last=2)
    paths = [store.save(step, _writer(b"x"), {}).path for step in (900, 1000, 1100)]
    assert not paths[0].exists() and paths[1].exists() and paths[2].exists()
    # Names that sort the wrong way round: the manifest's step decides, never the name.
    misleading = tmp_path / "ck" / "step-999999999999-zzzzzz"
    shutil.copytree(paths[1], misleading)
    manifest = orjson.loads((misleading / "manifest.json").read_bytes())
    manifest["step"], manifest["serial"] = 5, 0
    (misleading / "manifest.json").write_bytes(orjson.dumps(manifest))
    store.retain()
    assert not misleading.exists() and paths[1].exists() and paths[2].exists()
    assert store.latest_valid().step == 1100


def test_a_failed_save_removes_its_staging_and_keeps_the_previous(tmp_path):
    store = CheckpointStore(tmp_path / "ck")
    good = store.save(1, _writer(b"a"), {})

    def failing(directory):
        (directory / "weights.bin").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskUnwritable, match="no space left"):  # the disk's fault, said as such
        store.save(2, failing, {})
    names = os.listdir(tmp_path / "ck")
    assert not any(n.startswith(".staging-") for n in names)
    assert store.latest_valid().path == good.path
    assert (tmp_path / "ck" / LATEST).read_text().strip() == good.path.name


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="needs root to mount a small tmpfs")
def test_a_real_full_disk_during_a_save_loses_nothing(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        store = CheckpointStore(mount / "ck")
        good = store.save(1, _writer(b"a" * 8192), {})
        with pytest.raises(DiskUnwritable) as caught:
            store.save(2, _writer(b"b" * 200_000), {})
        assert caught.value.errno == errno.ENOSPC and "no space left" in str(caught.value)
        assert not any(n.startswith(".staging-") for n in os.listdir(mount / "ck"))
        assert store.latest_valid().path == good.path
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_staging_left_by_a_crash_is_swept(tmp_path):
    store = CheckpointStore(tmp_path / "ck")
    (tmp_path / "ck" / ".staging-step-000000000003-aaaaaa").mkdir()
    assert store.sweep_staging() == [".staging-step-000000000003-aaaaaa"]
