"""The base directory: where everything lives, how it is created and how it is checked.

    BASE/
      FORMAT              format name and version, checked by every reader
      config.toml         the config (trainctl init writes a commented default)
      inbox/              drop zone for cp/scp (copy to inbox/.name, then mv)
      pending/high|normal|low/ID/   queued items, FIFO by id within a priority
      active/ID/          the one item the daemon has claimed
      held/ID/  failed/ID/  done/ID/
      tmp/                writers stage here, then rename into place
      control/            requests from trainctl (pause.json, skip.json, stop.json)
      run/                daemon.json (the daemon's state), daemon.lock, spool.lock
      events/YYYY-MM.jsonl  append-only event log, one segment per UTC month
      events/v1/YYYY-MM.jsonl  format 1's single events.jsonl, split by month on upgrade
      logs/trainer.log[.N]  the daemon's log when it runs outside systemd (rotated by size)
      report.html         the report page (trainctl report; the daemon's copy if configured)
      eval/NAME.jsonl     named eval sets; eval/prompts.jsonl: sample prompts (docs/training.md)
      models/vNNN/ LATEST  published versions; models/.candidates/vNNN/: held back by the gate
      index/              what was queued before: files (sha256) and record digests (intake/seen.py)

Each item is a directory ``ID/`` holding ``data.jsonl`` (the queued copy) and
``meta.json``. The directory an item is in is its state; every state change is one rename.
Everything sits on one filesystem so that every rename is atomic.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, NamedTuple

import orjson

from trainer.errors import FormatMismatch, LayoutError, NotABaseDir
from trainer.spool.fsutil import fsync_dir, make_group_dir, write_atomic
from trainer.states import ItemState, Priority

if TYPE_CHECKING:  # imported where a Path is made: `trainctl status` reads through PlainLayout
    from pathlib import Path

FORMAT_NAME = "trainer-base"
FORMAT_VERSION = 2  # 2: the event log is monthly segments (1: one events.jsonl; upgraded by the daemon)
READABLE_VERSIONS = (1, 2)  # what this release opens; a version-1 dir is upgraded at the daemon's start
BASE_DIR_ENV = "TRAINER_BASE_DIR"


IN_PROGRESS_SUFFIXES = (".tmp", ".part")  # inbox files still being written: never taken


def is_candidate_name(name: str) -> bool:
    """An inbox name the daemon may take (dotfiles and *.tmp / *.part are someone's copy in progress)."""
    return not name.startswith(".") and not name.endswith(IN_PROGRESS_SUFFIXES)


# A NamedTuple, not a frozen dataclass: built at import, and a dataclass costs every trainctl
# command ~0.5 ms of start-up (it compiles its methods); this one needs none of theirs.
class Layout(NamedTuple):
    """Every path in the base dir, each named once here, joined to ``root`` by ``at``."""

    root: Path

    def at(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def format_file(self) -> Path:
        return self.at("FORMAT")

    @property
    def config_file(self) -> Path:
        return self.at("config.toml")

    @property
    def inbox(self) -> Path:
        return self.at("inbox")

    @property
    def tmp(self) -> Path:
        return self.at("tmp")

    @property
    def control(self) -> Path:
        return self.at("control")

    def control_file(self, name: str) -> Path:
        """A request in ``control/`` (``pause.json``...: ``spool/control.py``)."""
        return self.at("control", name)

    @property
    def run(self) -> Path:
        return self.at("run")

    @property
    def events_dir(self) -> Path:
        """The event log: one ``YYYY-MM.jsonl`` segment per UTC month."""
        return self.at("events")

    @property
    def converted_events(self) -> Path:
        """Format 1's single log split by month (``events/v1/YYYY-MM.jsonl``), never appended to."""
        return self.at("events", "v1")

    @property
    def old_events(self) -> Path:
        """Format 1's single event log; gone once the daemon has upgraded the base dir."""
        return self.at("events.jsonl")

    @property
    def eval_dir(self) -> Path:
        """Named eval sets (``NAME.jsonl``) and sample prompts (``prompts.jsonl``), dropped by people."""
        return self.at("eval")

    @property
    def models(self) -> Path:
        """Published versions (``vNNN/``, ``LATEST``) and held-back ones (``.candidates/vNNN/``)."""
        return self.at("models")

    @property
    def index_dir(self) -> Path:
        """What was queued before (trainer.intake.seen); made on first use."""
        return self.at("index")

    def file_index(self, prefix: str) -> Path:
        """One "SHA256 ID" line per queued file whose sha256 starts with these two hex digits."""
        return self.at("index", "files", prefix)

    def record_index(self, prefix: str) -> Path:
        """The digests of queued records that start with these two hex digits."""
        return self.at("index", "records", prefix)

    @property
    def index_lock(self) -> Path:
        return self.at("index", "lock")

    @property
    def daemon_state(self) -> Path:
        return self.at("run", "daemon.json")

    @property
    def housekeeping(self) -> Path:
        """When the last snapshot and consolidation happened (the daemon's own record)."""
        return self.at("run", "housekeeping.json")

    @property
    def log_target(self) -> Path:
        """Where the running (or last) daemon sends its log: the journal or ``log_file``."""
        return self.at("run", "log.json")

    @property
    def logs_dir(self) -> Path:
        return self.at("logs")

    @property
    def log_file(self) -> Path:
        """The daemon's log outside systemd; rotated to ``trainer.log.1``, ``.2``..."""
        return self.at("logs", "trainer.log")

    @property
    def report_page(self) -> Path:
        """The report page (``trainctl report``, or the daemon's copy with ``[report] every_minutes``)."""
        return self.at("report.html")

    @property
    def report_cache(self) -> Path:
        """Each item's metrics reduced for the report's charts (display only: rebuilt if lost)."""
        return self.at("run", "report-cache.json")

    @property
    def daemon_lock(self) -> Path:
        return self.at("run", "daemon.lock")

    @property
    def spool_lock(self) -> Path:
        return self.at("run", "spool.lock")

    @property
    def pending_root(self) -> Path:
        """The parent of the three pending queues."""
        return self.at("pending")

    def pending(self, priority: Priority) -> Path:
        return self.at("pending", priority.value)

    def state_dir(self, state: ItemState, priority: Priority | None = None) -> Path:
        """The directory holding items in ``state`` (pending needs its priority)."""
        if state is ItemState.PENDING:
            if priority is None:
                raise ValueError("pending items live in one directory per priority")
            return self.pending(priority)
        return self.at(state.value)

    def item_dirs(self) -> list[Path]:
        """Every directory that holds items, pending first in service order."""
        dirs = [self.pending(p) for p in Priority.in_service_order()]
        return dirs + [self.state_dir(s) for s in ItemState if s is not ItemState.PENDING]

    def spool_dirs(self) -> list[Path]:
        """Every directory that renames cross: they must share one filesystem."""
        return [self.inbox, self.tmp, self.control, self.run, *self.item_dirs()]


class PlainLayout(Layout):
    """The same paths as plain strings (``os.path.join``), for what only reads the base dir
    through ``os`` calls: ``trainctl status``, which so never imports ``pathlib`` (with the
    ``urllib.parse`` and ``ipaddress`` it pulls in, ~2.5 ms of a ~45 ms start-up). Code that
    writes, or calls ``Path`` methods, takes a ``Layout``."""

    __slots__ = ()
    root: str

    def at(self, *parts: str) -> str:  # type: ignore[override]  # str paths are this class's point
        return os.path.join(self.root, *parts)


def _read_format(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            data = orjson.loads(fh.read())
    except (FileNotFoundError, PermissionError):
        raise
    except (orjson.JSONDecodeError, OSError) as exc:
        raise FormatMismatch(f"{path}: unreadable format marker ({exc}); restore it or re-run trainctl init") from exc
    if not isinstance(data, dict):
        raise FormatMismatch(f"{path}: unreadable format marker (not a JSON object)")
    return data


def _init_command(layout: Layout) -> str:
    """The command that initialises this base dir, as it can be pasted: the global option goes
    before the command, and the path is quoted for the shell when it needs to be."""
    import shlex  # only on this error path: trainctl's start-up does not pay for it

    return f"trainctl --base-dir {shlex.quote(str(layout.root))} init"


def check_format(layout: Layout) -> None:
    """Refuse a base dir of another format or version, with what to do about it."""
    try:
        data = _read_format(layout.format_file)
    except FileNotFoundError:
        if not os.path.isdir(layout.root):
            raise NotABaseDir(
                f"{layout.root}: no such directory: create it with {_init_command(layout)} "
                f"(or point --base-dir or {BASE_DIR_ENV} at the one you meant)"
            ) from None
        raise NotABaseDir(
            f"{layout.root}: not a trainer base dir (no FORMAT file): run {_init_command(layout)}"
        ) from None
    if data.get("format") != FORMAT_NAME or data.get("version") not in READABLE_VERSIONS:
        raise FormatMismatch(
            f"{layout.root}: on-disk format {data.get('format')!r} version "
            f"{data.get('version')!r}, but this trainer understands {FORMAT_NAME!r} versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: use the trainer release that wrote it, or "
            f"migrate the base dir"
        )


def format_version(layout: Layout) -> int:
    """The version in FORMAT (checked by ``check_format`` on open)."""
    return _read_format(layout.format_file).get("version")


def write_format(layout: Layout) -> None:
    """Mark the base dir as this release's format (init, and the upgrade from version 1)."""
    marker = orjson.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION})
    write_atomic(layout.tmp, layout.format_file, marker + b"\n", mode=0o644)


def check_one_filesystem(layout: Layout) -> None:
    """Every spool dir must exist and share the base dir's filesystem (renames are atomic)."""
    root_dev = os.stat(layout.root).st_dev
    for path in [*layout.spool_dirs(), layout.events_dir]:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if path == layout.events_dir:
                continue  # a version-1 base dir has none yet: the first event or the upgrade makes it
            raise LayoutError(f"{path}: missing: run trainctl init to repair the layout") from None
        if not stat.S_ISDIR(st.st_mode):
            raise LayoutError(f"{path}: not a directory (a symlink or a file?): restore it as a directory")
        if st.st_dev != root_dev:
            raise LayoutError(
                f"{path}: on another filesystem than {layout.root}: renames across filesystems "
                f"are not atomic; keep every spool dir inside one filesystem (no mounts in it)"
            )


def open_base(root: Path | str) -> Layout:
    """A checked base dir: right format version, complete layout, one filesystem."""
    from pathlib import Path

    return _checked(Layout(Path(root).absolute()))


def open_plain(root: str) -> PlainLayout:
    """``open_base`` with the paths as plain strings, for a reader that needs no ``Path``.
    The root is made absolute as given, not normalised (after a symlink, ``..`` means what the
    kernel makes of it, not what a text edit would)."""
    return _checked(PlainLayout(os.path.join(os.getcwd(), root.rstrip("/") or root)))


def _checked(layout: Layout) -> Layout:
    check_format(layout)
    check_one_filesystem(layout)
    return layout


def _make_dir(path: Path) -> None:
    try:
        make_group_dir(path)
    except FileExistsError:
        return


def init_base(root: Path | str, config_text: str, *, config_link: Path | None = None) -> tuple[Layout, bool]:
    """Create (or complete) the layout; never touches existing items, config or data.

    With ``config_link``, a new base dir's config.toml is a symlink to that file instead (the
    systemd units keep the config in /etc/trainer, where the daemon cannot rewrite it, and
    trainctl still finds it in the base dir). Returns the layout and whether it was new.
    """
    from pathlib import Path

    layout = Layout(Path(root).absolute())
    existed = layout.format_file.exists()
    if existed:
        check_format(layout)
    if not layout.root.is_dir():
        layout.root.mkdir(parents=True)
        # mkdir honours the umask, and under umask 0 the base dir would be world-writable:
        # anyone could then replace inbox/ or events/. Whatever else the umask allows
        # stays (readable by all, so that trainctl can name a refusal by its path).
        os.chmod(layout.root, stat.S_IMODE(os.stat(layout.root).st_mode) & ~0o002)
    for path in (layout.pending_root, *layout.spool_dirs(), layout.events_dir, layout.eval_dir):
        _make_dir(path)
    # Shared by every group member: made here with the group's mode, not by whoever comes first
    # with whatever umask they have. (Event segments get theirs from their first appender.)
    fd = os.open(layout.spool_lock, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o660)
    os.fchmod(fd, 0o660)
    os.close(fd)
    if config_link is not None and not os.path.lexists(layout.config_file):
        os.symlink(Path(config_link).absolute(), layout.config_file)
    elif not layout.config_file.exists():
        write_atomic(layout.tmp, layout.config_file, config_text.encode())
    if not existed:
        write_format(layout)
    for directory in (layout.root, layout.pending_root, layout.run):
        fsync_dir(directory)
    check_one_filesystem(layout)
    return layout, not existed
