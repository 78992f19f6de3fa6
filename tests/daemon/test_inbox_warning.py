"""An inbox file that fails validation is logged at WARNING with its reasons, not just "(failed)"."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from helpers.daemon_proc import small_config
from helpers.fake_engine import FakeEngine

from trainer.clock import Now
from trainer.config import default_config_toml, load_config
from trainer.daemon.service import Daemon
from trainer.spool import queue
from trainer.spool.layout import init_base


def test_a_rejected_inbox_file_is_a_warning_naming_the_problem(tmp_path, caplog):
    layout, _ = init_base(tmp_path / "base", default_config_toml())
    layout.config_file.write_text(small_config(spool={"inbox_settle_seconds": 0}))
    (layout.inbox / "broken.jsonl").write_bytes(b'{"text": "fine"}\n{"text": 5}\n')
    (layout.inbox / "good.jsonl").write_bytes(b'{"text": "fine"}\n')
    daemon = Daemon(layout, load_config(layout.config_file),
                    engine_factory=lambda root, config: FakeEngine(root, config))
    daemon.start()
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    with caplog.at_level(logging.INFO, logger="trainer.daemon"):
        daemon.tick(Now(utc=later, local=later, monotonic=10_000.0))
    assert queue.counts(layout)["failed"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "inbox" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "broken.jsonl" in warnings[0] and 'broken.jsonl:2: "text" must be a string' in warnings[0]
    taken = [r for r in caplog.records if "good.jsonl" in r.getMessage()]
    assert taken and {r.levelno for r in taken} == {logging.INFO}, "a valid file stays at INFO"
