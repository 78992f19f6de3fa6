"""``trainer run`` with one injected fault: an item whose data holds the marker IO-ERROR fails
with EIO when the engine prepares it, as a bad sector under the file would. Its transient
failure path (back to the queue, tried again after a delay, failed after the last attempt)
then runs in a real daemon process.

    io_error_daemon.py run --base-dir DIR [...]   (the arguments of `trainer run`)
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

from trainer.train import engine  # noqa: E402

MARKER = b"IO-ERROR"
_prepare = engine.Engine.prepare


def _prepare_or_fail(self, item_id: str, sha256: str, data_path: Path):
    with open(data_path, "rb") as fh:
        if MARKER in fh.read():
            raise OSError(errno.EIO, "Input/output error (injected)", str(data_path))
    return _prepare(self, item_id, sha256, data_path)


engine.Engine.prepare = _prepare_or_fail

if __name__ == "__main__":
    from trainer.daemon.main import main

    main()
