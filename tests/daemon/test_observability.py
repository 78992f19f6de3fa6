"""What people watch, from one real daemon run outside systemd: its log file (and trainctl logs
over it), the Prometheus text file, TensorBoard events and trainctl plot; then the same
daemon with every one of those outputs refused by the disk, still training its item."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import orjson
import pytest

pytest.importorskip("torch")

from helpers.common import REPO, trainctl  # noqa: E402
from helpers.daemon_proc import DaemonProcess, enqueue_sample, metric_steps, small_config  # noqa: E402
from helpers.exposition import parse  # noqa: E402

from trainer.config import default_config_toml  # noqa: E402
from trainer.spool import metrics as metrics_log  # noqa: E402
from trainer.spool import queue  # noqa: E402
from trainer.spool.layout import init_base  # noqa: E402
from trainer.states import ItemState  # noqa: E402



def make_base(root, demo_model, **metrics):
    layout, _ = init_base(root / "base", default_config_toml())
    layout.config_file.write_text(small_config(metrics=metrics) if metrics else small_config())
    shutil.copytree(demo_model, layout.root / "models" / "base")
    return layout


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_model):
    """A daemon outside systemd that trained one small item to done and exited (when idle)."""
    root = tmp_path_factory.mktemp("observed")
    metrics = {"prometheus_textfile": str(root / "textfile" / "{name}.prom")}
    try:
        import tensorboard  # noqa: F401

        metrics["tensorboard"] = True
    except ImportError:
        pass
    (root / "textfile").mkdir()
    layout = make_base(root, demo_model, **metrics)
    item_id = enqueue_sample(layout, root, records=24)
    daemon = DaemonProcess(layout, "--exit-when-idle")
    try:
        assert daemon.finish(timeout=300) == 0, daemon.output()
    finally:
        daemon.kill()
    assert queue.find(layout, item_id).state is ItemState.DONE
    return layout, item_id, root / "textfile" / "base.prom"


def test_trainer_has_version_and_help_like_trainctl(tmp_path):
    def trainer(*args):
        return subprocess.run([sys.executable, "-m", "trainer.daemon", *args], capture_output=True, text=True,
                              cwd=REPO, timeout=60)

    assert re.match(r"trainer, version \d", trainer("--version").stdout)
    for args in (["-h"], ["--help"]):
        shown = trainer(*args)
        assert shown.returncode == 0 and "run" in shown.stdout and "--version" in shown.stdout
    assert "--exit-when-idle" in trainer("run", "-h").stdout
    assert trainer().returncode == 2  # no command: usage, as before
    assert trainer("run", "--no-such-option").returncode == 2
    missing = trainer("run", "--base-dir", str(tmp_path / "nothing"))
    assert missing.returncode == 78 and "trainctl --base-dir" in missing.stderr and " init" in missing.stderr


def test_outside_systemd_the_log_goes_to_the_base_dir_and_trainctl_logs_reads_it(trained):
    layout, item_id, _ = trained
    assert orjson.loads(layout.log_target.read_bytes())["journal"] is False
    assert layout.log_file.exists()
    shown = trainctl(layout.root, "logs", "-n", "500")
    assert shown.returncode == 0, shown.stderr
    assert "ready (pid" in shown.stdout and f"done {item_id}" in shown.stdout
    assert len(trainctl(layout.root, "logs", "-n", "2").stdout.splitlines()) == 2


def test_logs_item_shows_every_line_about_the_item_and_only_those(trained):
    layout, item_id, _ = trained
    shown = trainctl(layout.root, "logs", "--item", item_id, "-n", "500")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert all(item_id in line for line in lines), lines
    # Lines that do not name the item themselves are tagged while it trains:
    assert any(f"[{item_id}] checkpoint" in line for line in lines), lines
    assert any(re.search(r" step (\d+)/\1 ", line) for line in lines), lines  # the last step
    assert not any("ready (pid" in line for line in lines)
    assert trainctl(layout.root, "logs", "--since", "2999-01-01T00:00").stdout == ""


def test_prometheus_file_is_valid_exposition_with_the_run_s_figures(trained):
    layout, item_id, prom = trained
    typed, values = parse(prom.read_text())
    base = f'base_dir="{layout.root}"'
    assert values[f'trainer_daemon_state{{{base},state="stopped"}}'] == 1
    assert values[f'trainer_daemon_state{{{base},state="training"}}'] == 0
    assert values[f'trainer_queue_items{{{base},state="done"}}'] == 1
    assert values[f"trainer_steps_total{{{base}}}"] == len(metric_steps(layout, item_id))
    assert values[f'trainer_loss{{{base},item="{item_id}"}}'] > 0
    assert typed["trainer_steps_total"] == "counter" and typed["trainer_tokens_total"] == "counter"
    assert not list(prom.parent.glob("*.tmp")), "no temporary file left beside it"


def test_tensorboard_events_hold_the_item_s_loss_at_each_global_step(trained):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed: pip install '.[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    layout, item_id, _ = trained
    events = EventAccumulator(str(layout.root / "tensorboard" / item_id))
    events.Reload()
    steps = [event.step for event in events.Scalars("train/loss")]
    assert steps == [record["global_step"] for record in metrics_log.read(layout, item_id).steps]


def test_plot_draws_the_real_item_s_curve(trained):
    layout, item_id, _ = trained
    shown = trainctl(layout.root, "plot", item_id, "--width", "60")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"loss of {item_id} data.jsonl: global steps 1-")
    assert any(ch for ch in shown.stdout if 0x2800 < ord(ch) <= 0x28FF), "braille dots drawn"


def test_every_display_output_refused_by_the_disk_never_fails_the_item(tmp_path, demo_model, small_tmpfs):
    """The log file is /dev/full and the Prometheus file's filesystem is full: each is said once,
    and the item trains to done."""
    full = small_tmpfs("1m")
    with open(full / "filler", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    layout = make_base(tmp_path, demo_model, prometheus_textfile=str(full / "trainer.prom"))
    layout.logs_dir.mkdir()
    layout.log_file.symlink_to("/dev/full")
    item_id = enqueue_sample(layout, tmp_path, records=24)
    daemon = DaemonProcess(layout, "--exit-when-idle")
    try:
        assert daemon.finish(timeout=300) == 0, daemon.output()
    finally:
        daemon.kill()
    assert queue.find(layout, item_id).state is ItemState.DONE
    output = daemon.output()
    assert output.count("cannot write the log file") == 1, output
    assert output.count("cannot write the Prometheus file") == 1, output
    assert not (full / "trainer.prom").exists()
