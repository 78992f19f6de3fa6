"""Security: who can steer the daemon and read the data, and what nothing can make it touch.

- A user outside the base dir's group can neither enqueue, steer, nor read training data
  (and a group member can, so the refusal is the group's and nothing else's).
- No id and nothing in the inbox or the spool makes trainctl or the daemon read or write
  outside the base dir.
- After a real daemon run nothing it created is world-writable, and no secret from its
  environment is in any file it wrote or in what it printed.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from helpers.common import OTHERS_PYTHON, REPO, as_user, trainctl, write_jsonl

from trainer.config import Config
from trainer.errors import WrongState
from trainer.exitcodes import ExitCode
from trainer.intake import enqueue
from trainer.intake.inbox import ingest
from trainer.spool import queue
from trainer.states import ItemState, Priority

OUTSIDER, MEMBER, GROUP = 61001, 61002, 61003  # numeric ids: setpriv needs no passwd entry

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root (to act as other users) and setpriv")


def _as(uid: int, *groups: int) -> list[str]:
    return as_user(uid, groups=groups)


def _run_as(prefix: list[str], base: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, OTHERS_PYTHON(), "-m", "ctl", "--base-dir", str(base), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def _tree(root: Path) -> dict[str, tuple]:
    """Every path under root with what would show a change to it."""
    return {str(p.relative_to(root)): (os.lstat(p).st_mode, os.lstat(p).st_size, os.lstat(p).st_mtime_ns)
            for p in [root, *root.rglob("*")]}


@pytest.fixture
def shared(open_layout, tmp_path):
    """A base dir of group GROUP holding a pending and a failed item, and a file anyone may read."""
    layout = open_layout
    secret_record = {"text": "confidential training text"}
    pending = enqueue.enqueue(layout, write_jsonl(tmp_path / "a.jsonl", [secret_record]), limits=Config().spool)
    (layout.inbox / "bad.jsonl").write_bytes(b"not json\n")
    failed = ingest(layout, "bad.jsonl", Config().spool)
    for path in [layout.root, *layout.root.rglob("*")]:
        os.chown(path, 0, GROUP, follow_symlinks=False)
    src = layout.root.parent / "data.jsonl"
    write_jsonl(src, [{"text": "from a user"}])
    os.chmod(src, 0o644)
    return layout, pending.id, failed.item_id, src


@needs_root
def test_a_user_outside_the_group_can_neither_steer_nor_read(shared):
    layout, pending_id, failed_id, src = shared
    outsider = _as(OUTSIDER)
    before = _tree(layout.root)
    commands = [["enqueue", str(src)], ["pause"], ["resume"], ["skip"], ["stop"], ["consolidate"],
                ["hold", pending_id], ["release", pending_id], ["remove", pending_id], ["retry", failed_id],
                ["retry", "--all-failed"], ["move", pending_id, "--priority", "high"], ["show", pending_id],
                ["history"], ["list", "--all"], ["wait", pending_id, "--timeout", "1"]]
    for args in commands:
        result = _run_as(outsider, layout.root, *args)
        assert result.returncode == ExitCode.NO_PERMISSION, (args, result.returncode, result.stderr)
        assert "Traceback" not in result.stderr and "confidential" not in result.stdout + result.stderr
    item_dir = layout.pending(Priority.NORMAL) / pending_id
    for reader in (["cat", str(item_dir / "data.jsonl")], ["ls", str(layout.inbox)],
                   ["cp", str(src), str(layout.inbox / "dropped.jsonl")], ["cat", str(_segment(layout))]):
        result = subprocess.run([*outsider, *reader], capture_output=True, text=True)
        assert result.returncode != 0 and "confidential" not in result.stdout, reader
    assert _tree(layout.root) == before, "nothing changed, nothing was added"


def _segment(layout):
    [segment] = layout.events_dir.glob("*.jsonl")  # the fixture's events made it
    return segment


@needs_root
def test_a_group_member_can_do_what_an_outsider_cannot(shared):
    layout, pending_id, _, src = shared
    member = _as(MEMBER, GROUP)
    for args in (["enqueue", str(src)], ["show", pending_id], ["pause"], ["resume"], ["list"]):
        result = _run_as(member, layout.root, *args)
        assert result.returncode == 0, (args, result.stderr)
    cat = subprocess.run([*member, "cat", str(layout.pending(Priority.NORMAL) / pending_id / "data.jsonl")],
                         capture_output=True, text=True)
    assert "confidential" in cat.stdout


BAD_IDS = ["../x", "..", "/etc/passwd", "a/b", "20261128T194440.123456Z-3fa9c1b2/../../../etc",
           "20261128T194440.123456Z-3fa9c1b2\n", "-20261128T194440.123456Z-3fa9c1b2"]


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_an_id_that_is_a_path_is_refused_by_every_command_before_it_touches_anything(layout, bad_id):
    before = _tree(layout.root)
    for args in (["show"], ["hold"], ["release"], ["remove"], ["retry"], ["move", "--priority", "high"],
                 ["wait", "--timeout", "1"]):
        result = trainctl(layout.root, args[0], "--", bad_id, *args[1:])
        assert result.returncode in (ExitCode.NO_SUCH_ITEM, ExitCode.USAGE), (args, bad_id, result.stderr)
        assert "not an item id" in result.stderr or "Usage" in result.stderr
    assert trainctl(layout.root, "history", "--id", bad_id).returncode in (ExitCode.NO_SUCH_ITEM, ExitCode.USAGE)
    assert _tree(layout.root) == before


def test_a_symlink_planted_in_the_spool_is_never_followed(layout, tmp_path):
    """A group member links pending/normal/ID to a directory outside: it is listed with the
    reason, fails when claimed, cannot be retried, and removing it removes only the link."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.jsonl").write_bytes(b'{"text": "outside"}\n')
    item_id = "20261128T000000.000000Z-0badc0de"
    meta = (b'{"schema": 1, "id": "%s", "name": "x", "source": "enqueue", "sha256": "", "size": 1, '
            b'"records": 1, "enqueued_at": "2026-11-28T00:00:00+00:00", "priority": "normal", "attempts": 0}'
            % item_id.encode())
    (outside / "meta.json").write_bytes(meta)
    before = _tree(outside)
    os.symlink(outside, layout.pending(Priority.NORMAL) / item_id)

    listed = queue.find(layout, item_id)
    assert listed.meta is None and "symlink" in listed.meta_problem
    claimed = queue.claim_next(layout)
    assert claimed.id == item_id
    with pytest.raises(WrongState, match="symlink"):
        enqueue.validate_item_data(claimed, Config().spool)  # what the daemon checks at claim
    queue.fail(layout, item_id, "its metadata is unreadable")
    with pytest.raises(WrongState, match="symlink"):
        enqueue.retry(layout, item_id, Config().spool)
    queue.remove(layout, item_id)
    assert _tree(outside) == before, "nothing outside was read into the spool or written"
    assert queue.counts(layout)["failed"] == 0


def test_an_inbox_symlink_to_a_file_outside_is_never_read(layout, tmp_path):
    target = write_jsonl(tmp_path / "private.jsonl", [{"text": "private"}])
    os.utime(target, (1_000_000_000, 1_000_000_000))
    os.symlink(target, layout.inbox / "link.jsonl")
    assert ingest(layout, "link.jsonl", Config().spool) is None
    assert os.stat(target).st_atime == 1_000_000_000, "not even opened"
    assert os.path.islink(layout.inbox / "link.jsonl") and queue.counts(layout)["pending"] == 0


def _world_writable(root: Path) -> list[str]:
    found = []
    for path in [root, *root.rglob("*")]:
        st = os.lstat(path)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & stat.S_IWOTH:
            found.append(str(path.relative_to(root)))
    return found


SECRET = "fake-secret-5b0e8d1c2a7f4e39"


@pytest.fixture(scope="module")
def daemon_run(tmp_path_factory, request):
    """One real daemon run under umask 0 (the harshest) with secrets in its environment:
    two good files, one bad one, then trainctl's views of it all."""
    pytest.importorskip("torch")
    from helpers.chaos_base import small_base
    from helpers.daemon_proc import DaemonProcess

    demo_model = request.getfixturevalue("demo_model")
    root = tmp_path_factory.mktemp("secure")
    secrets = {"TRAINER_FAKE_SECRET": SECRET, "HF_TOKEN": "hf_" + SECRET, "AWS_SECRET_ACCESS_KEY": SECRET[::-1]}
    saved_env = {k: os.environ.get(k) for k in secrets}
    old_umask = os.umask(0)
    try:
        os.environ.update(secrets)
        layout = small_base(root / "base", demo_model)
        for models in [layout.root / "models", *(layout.root / "models").rglob("*")]:
            os.chmod(models, os.stat(models).st_mode & ~0o022)  # the copied model is ours, not the daemon's
        for n in range(2):
            src = write_jsonl(root / f"good{n}.jsonl", [{"text": f"good {n}"}] * 4)
            enqueue.enqueue(layout, src, limits=Config().spool)
        (layout.inbox / "bad.jsonl").write_bytes(b'{"text": 5}\n')
        daemon = DaemonProcess(layout, "--exit-when-idle")
        assert daemon.finish(240) == 0, daemon.output()
        views = [trainctl(layout.root, *args) for args in (["status", "--json"], ["list", "--all", "--json"],
                                                             ["history", "--json"])]
    finally:
        os.umask(old_umask)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return layout, secrets, views


def test_no_secret_from_the_environment_is_written_or_printed(daemon_run):
    layout, secrets, views = daemon_run
    assert queue.counts(layout)["done"] == 2 and queue.counts(layout)["failed"] == 1
    needles = [value.encode() for value in secrets.values()]
    files = [p for p in layout.root.parent.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(files) > 20
    for path in files:  # every file it wrote, its log (daemon.log beside the base dir) too
        data = path.read_bytes()
        assert not any(needle in data for needle in needles), path
    for view in views:
        assert view.returncode in (0, ExitCode.NOT_RUNNING) and not any(n.decode() in view.stdout + view.stderr for n in needles)


def test_nothing_the_daemon_creates_is_world_writable_even_under_umask_0(daemon_run):
    layout, _, _ = daemon_run
    # A file dropped in the inbox is taken by rename and keeps the mode its writer gave it
    # (here 0666: it was written under umask 0 too). The daemon did not create it, and it is
    # out of others' reach: every spool directory is 2770.
    dropped = {f"{i.path.relative_to(layout.root)}/data.jsonl" for i in queue.list_items(layout, list(ItemState))
               if i.meta.source == "inbox"}
    found = [p for p in _world_writable(layout.root) if p not in dropped]
    assert all(os.stat(layout.root / p).st_mode & 0o7777 == 0o2770 for p in
               ("inbox", "pending/normal", "failed", "done", "tmp", "control", "run"))
    assert found == [], "spool modes are set whatever the umask; the daemon masks others out of its own"


DAEMON_USER = 61004
LOAD_EVERY_MODEL = """
import sys
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
for path in sys.argv[1:]:
    AutoTokenizer.from_pretrained(path, local_files_only=True)
    AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    print("loaded", Path(path).name, flush=True)
"""


@pytest.fixture
def open_dir():
    """A directory every user can traverse (pytest's tmp_path is private to its owner)."""
    import tempfile

    parent = Path(tempfile.mkdtemp(prefix="trainer-test-"))
    os.chmod(parent, 0o755)
    yield parent
    shutil.rmtree(parent, ignore_errors=True)


@needs_root
def test_a_group_member_loads_every_version_and_snapshot_the_daemon_user_published(open_dir, demo_model):
    """The daemon runs as its own user (not root) in the group; a member of the group, neither
    root nor the daemon user, loads what it published with plain from_pretrained; an outsider
    cannot. (Before: a version's weights were a hard link to a 0600 checkpoint file.)"""
    pytest.importorskip("torch")
    from helpers.chaos_base import small_base
    from helpers.daemon_proc import small_config

    parent = open_dir
    layout = small_base(parent / "base", demo_model)
    layout.config_file.write_text(small_config(checkpoint={"every_steps": 50}, snapshot={"at": "00:00"},
                                               daemon={"consolidate_when_idle": True}))
    home = parent / "home"
    home.mkdir()
    for path in [layout.root, *layout.root.rglob("*"), home]:  # as install-unit leaves it: trainer:trainer
        os.chown(path, DAEMON_USER, GROUP, follow_symlinks=False)
    for directory in (layout.root / "models", layout.root):
        os.chmod(directory, 0o2770)
    env = {**os.environ, "HOME": str(home), "HF_HOME": str(home / "hf")}
    src = write_jsonl(parent / "item.jsonl", [{"text": f"published {k}"} for k in range(6)])
    os.chmod(src, 0o644)
    assert _run_as(_as(DAEMON_USER, GROUP), layout.root, "enqueue", str(src)).returncode == 0
    run = subprocess.run([*as_user(DAEMON_USER, GROUP, (GROUP,)), OTHERS_PYTHON(), "-m", "trainer.daemon", "run",
                          "--base-dir", str(layout.root), "--exit-when-idle"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    published = sorted(layout.root.glob("models/v*")) + sorted(layout.root.glob("snapshots/*"))
    assert [p.name for p in published][:1] == ["v001"] and len(published) == 2
    load = [OTHERS_PYTHON(), "-c", LOAD_EVERY_MODEL, *map(str, published)]
    member_env = {**env, "HOME": "/nonexistent", "HF_HOME": str(parent / "member-hf")}
    member = subprocess.run([*_as(MEMBER, GROUP), *load], capture_output=True, text=True, cwd=REPO, env=member_env,
                            timeout=300)
    assert member.returncode == 0, member.stderr[-3000:]
    assert member.stdout.count("loaded") == 2
    outsider = subprocess.run([*_as(OUTSIDER), *load], capture_output=True, text=True, cwd=REPO, env=member_env,
                              timeout=300)
    assert outsider.returncode != 0 and "loaded" not in outsider.stdout
