"""What trainctl prints for people: list, show, history, colours, status on a terminal, the
JSON of enqueue and wait, and what a plain status does not import."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from helpers.common import REPO, trainctl, write_jsonl

from ctl import when
from trainer.intake import enqueue
from trainer.spool import metrics, queue
from trainer.states import ItemState

ESC = "\x1b["


def _on_a_terminal(argv: list[str], *, seconds: float, env: dict | None = None, interrupt: bool = False) -> str:
    """Run ``argv`` with stdout and stderr on a pseudo-terminal; what it wrote there."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL, cwd=REPO,
                            env={**os.environ, "TERM": "xterm", **(env or {})},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(follower)
    out = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                out += os.read(leader, 65536)
            except OSError:
                break
    if interrupt and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    proc.wait(30)
    while True:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    return out.decode(errors="replace")


def _ctl(layout, *args: str) -> list[str]:
    return [sys.executable, "-m", "ctl", "--base-dir", str(layout.root), *args]


def _train_by_hand(layout, item_id: str, losses: list[float], *, evaluate: bool = False) -> None:
    """What the daemon leaves for a finished item: claimed, metrics lines, done."""
    queue.claim_next(layout)
    lines = [{"item_id": item_id, "step": n + 1, "total": len(losses), "global_step": n + 1, "loss": loss,
              "smoothed_loss": loss, "tokens": 10} for n, loss in enumerate(losses)]
    if evaluate:
        lines.append({"kind": "eval", "set": "holdout", "step": len(losses), "eval_loss": 1.5,
                      "eval_perplexity": 4.48, "eval_token_accuracy": 0.61, "tokens": 321})
    lines.append({"kind": "something-new", "step": 99})  # a kind this reader does not know: skipped
    metrics.path(layout, item_id).parent.mkdir(exist_ok=True)
    write_jsonl(metrics.path(layout, item_id), lines)
    queue.complete(layout, item_id, steps=len(losses), global_step=len(losses))


def test_list_shows_age_time_trained_progress_and_loss(layout, limits, chat_file):
    done = enqueue.enqueue(layout, chat_file(), limits=limits).id
    _train_by_hand(layout, done, [2.5, 1.25])
    enqueue.enqueue(layout, chat_file(), limits=limits)
    rows = trainctl(layout.root, "list", "--all").stdout.splitlines()
    assert rows[0].split() == ["ID", "STATE", "PRIO", "TRIES", "RECORDS", "SIZE", "AGE", "TRAINED", "PROGRESS",
                               "LOSS", "NAME"]
    done_row = next(r for r in rows if " done " in r).split()
    assert done_row[-3:-1] == ["100%", "1.2500"] and done_row[-4].endswith("s")
    pending_row = next(r for r in rows if " pending " in r).split()
    assert pending_row[-4:-1] == ["-", "-", "-"]
    assert ESC not in "".join(rows), "no colour into a pipe"


def test_show_is_a_readable_block_with_loss_tokens_evals_and_the_metrics_file(layout, limits, chat_file):
    item_id = enqueue.enqueue(layout, chat_file(), limits=limits).id
    queue.claim_next(layout)
    queue.set_tokens(layout, item_id, {"examples": 3, "tokens": 1234, "mean": 411.3, "truncated": 0})
    queue.requeue(layout, item_id, reason="test", count_attempt=False)
    _train_by_hand(layout, item_id, [3.0, 2.0, 1.5], evaluate=True)
    result = trainctl(layout.root, "show", item_id[-8:-4])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "{" not in out and "'" not in out, "no Python dicts"
    lines = {line.split()[0] if not line.startswith("final loss") else "final loss": line for line in out.splitlines()}
    assert "1.5000" in lines["final loss"] and "step 3/3" in lines["final loss"]
    assert "tokens 1,234" in lines["tokens"] and "mean 411.3" in lines["tokens"]
    assert "holdout" in lines["eval"] and "loss 1.5" in lines["eval"] and "token accuracy 0.61" in lines["eval"]
    assert str(metrics.path(layout, item_id)) in lines["metrics"]
    assert "trained" in lines
    shown = orjson.loads(trainctl(layout.root, "show", item_id, "--json").stdout)
    assert shown["training"]["final_loss"] == 1.5 and shown["training"]["evals"][0]["eval_loss"] == 1.5


def test_history_is_short_by_default_and_whole_with_v(layout, limits, chat_file):
    item_id = enqueue.enqueue(layout, chat_file(), limits=limits).id
    brief = trainctl(layout.root, "history").stdout
    assert item_id not in brief and item_id[-8:-4] in brief and "sha256" not in brief
    assert max(len(word) for word in brief.split()) < 64
    full = trainctl(layout.root, "history", "-v").stdout
    assert item_id in full and "sha256=" in full


@pytest.mark.parametrize("text,expected", [
    ("now", timedelta(0)), ("-1h", timedelta(hours=-1)), ("1h ago", timedelta(hours=-1)),
    ("+30min", timedelta(minutes=30)), ("2 days ago", timedelta(days=-2)), ("30m", timedelta(minutes=-30)),
    ("7d", timedelta(days=-7)),
])
def test_relative_time_words(text, expected):
    now = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
    assert when.parse(text, now) == now + expected


def test_day_words_are_local_midnights():
    now = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
    today = when.parse("today", now)
    assert today.astimezone().hour == 0 and today <= now < today + timedelta(days=1)
    assert when.parse("yesterday", now) == today - timedelta(days=1)
    assert when.parse("2026-11-28T09:00+00:00", now) == datetime(2026, 11, 28, 9, tzinfo=timezone.utc)
    for nonsense in ("yesterday-ish", "5 parsecs ago", ""):
        with pytest.raises(ValueError):
            when.parse(nonsense, now)


def test_history_since_and_until_take_journalctl_words(layout, limits, chat_file):
    enqueue.enqueue(layout, chat_file(), limits=limits)

    def count(*args):
        result = trainctl(layout.root, "history", "--json", *args)
        assert result.returncode == 0, result.stderr
        return len(orjson.loads(result.stdout)["events"])

    assert count("--since", "today") == 1 or count("--since", "yesterday") == 1  # just after midnight
    assert count("--since", "-1h") == 1 and count("--since", "yesterday", "--until", "now") == 1
    assert count("--until", "-1h") == 0 and count("--since", "tomorrow") == 0
    bad = trainctl(layout.root, "history", "--since", "soonish")
    assert bad.returncode == 2 and "yesterday" in bad.stderr


def test_colours_on_a_terminal_only_and_never_with_no_color(layout):
    coloured = _on_a_terminal(_ctl(layout, "status"), seconds=30)
    assert "not running" in coloured and ESC in coloured
    plain = _on_a_terminal(_ctl(layout, "status"), seconds=30, env={"NO_COLOR": "1"})
    assert "not running" in plain and ESC not in plain
    piped = trainctl(layout.root, "status")
    assert "not running" in piped.stdout and ESC not in piped.stdout


def test_status_watch_redraws_in_place_on_a_terminal(layout, fake_daemon):
    fake_daemon(layout.root)
    out = _on_a_terminal(_ctl(layout, "status", "--watch"), seconds=3.5, interrupt=True)
    assert out.count("running (pid") >= 2, out
    assert f"{ESC}2K{ESC}1A" in out, "each view erases the last one (cursor up, erase line)"
    assert "Traceback" not in out


def test_a_plain_status_imports_no_live_view_no_config_and_no_event_log(layout):
    probe = ("import sys\nfrom ctl.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "sys.stderr.write('MODULES ' + ' '.join(sorted(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", probe, "--base-dir", str(layout.root), "status"],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    loaded = set(result.stderr.split("MODULES ", 1)[1].split())
    assert "daemon" in result.stdout
    unwanted = {"rich", "trainer.config", "tomllib", "trainer.spool.events", "trainer.intake", "shutil",
                "ctl.itemview", "ctl.commands.queue", "torch", "subprocess",
                "pathlib", "trainer.spool.item", "trainer.spool.origin",  # status reads through PlainLayout
                "trainer.spool.queue", "trainer.eventkinds",  # it counts through spool.listing
                "locale"}  # imported by gettext's first call: trainctl gives click's help and version words
    assert not unwanted & loaded, unwanted & loaded


def test_trainctl_runs_its_command_with_its_start_up_frozen_and_the_collector_back_on(layout):
    """The entry point keeps the garbage collector off while trainctl's modules load and freezes
    them; the command itself runs with it on (status --watch and wait run for hours)."""
    probe = ("import gc, sys\nfrom ctl import entry\ntry:\n    entry.main(sys.argv[1:])\nexcept SystemExit:\n"
             "    pass\nprint('GC', gc.isenabled(), gc.get_freeze_count())\n")
    result = subprocess.run([sys.executable, "-c", probe, "--base-dir", str(layout.root), "status"],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "daemon" in result.stdout, result.stderr
    enabled, frozen = result.stdout.rsplit("GC ", 1)[1].split()
    assert enabled == "True" and int(frozen) > 10_000, result.stdout


def test_enqueue_json_lists_what_was_queued(layout, chat_file):
    result = trainctl(layout.root, "enqueue", "--json", "--hold", str(chat_file()), str(chat_file()))
    assert result.returncode == 0, result.stderr
    items = orjson.loads(result.stdout)["items"]
    assert len(items) == 2 and all(i["state"] == "held" and i["records"] == 3 for i in items)
    assert {i["id"] for i in items} == {i.id for i in queue.list_items(layout, [ItemState.HELD])}


def test_wait_json_and_the_final_line(layout, chat_file, fake_daemon):
    fake_daemon(layout.root, "--consume")
    item_id = trainctl(layout.root, "enqueue", str(chat_file())).stdout.strip()
    result = trainctl(layout.root, "wait", item_id, "--json", "--timeout", "60")
    assert result.returncode == 0
    outcome = orjson.loads(result.stdout)
    assert outcome["id"] == item_id and outcome["outcome"] == "done" and outcome["exit_code"] == 0
    assert f"{item_id} done" in result.stderr


def test_wait_shows_progress_on_a_terminal(layout, chat_file, fake_daemon):
    fake_daemon(layout.root, "--consume", "--train-seconds", "3")
    item_id = trainctl(layout.root, "enqueue", str(chat_file())).stdout.strip()
    out = _on_a_terminal(_ctl(layout, "wait", item_id, "--timeout", "60"), seconds=90)
    assert "step " in out and "/100" in out, out
    assert f"{item_id} done" in out
