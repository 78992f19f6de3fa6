"""trainctl plot: the braille chart, the metrics lines it reads and skips, and --png."""

from __future__ import annotations

import struct

import orjson
import pytest
from helpers.common import trainctl

from ctl.chart import BRAILLE, Series, render

A = "20261130T010613.759528Z-36166aae"
B = "20261130T020613.759528Z-46166aae"


def write_metrics(layout, item_id, lines):
    directory = layout.root / "metrics"
    directory.mkdir(exist_ok=True)
    with open(directory / f"{item_id}.jsonl", "ab") as fh:
        for record in lines:
            fh.write(record if isinstance(record, bytes) else orjson.dumps(record) + b"\n")


def steps(item_id, first, losses):
    return [{"item_id": item_id, "step": n + 1, "global_step": first + n, "loss": loss, "lr": 1e-3,
             "tokens_per_s": 100.0 + n} for n, loss in enumerate(losses)]


def dots(row: str) -> str:
    return "".join(ch for ch in row if BRAILLE < ord(ch) <= BRAILLE + 0xFF)


def test_a_falling_curve_starts_top_left_and_ends_bottom_right():
    lines = render([Series("", [(x, 10.0 - x) for x in range(10)])], width=40, height=5)
    chart = [row.split("┤", 1)[-1].split("│", 1)[-1] for row in lines[:5]]
    assert lines[0].split()[0] == "10" and lines[4].split()[0] == "1"  # max on top, min at the bottom
    assert dots(chart[0]) and chart[0].index(dots(chart[0])[0]) == 0
    assert chart[4].rstrip()[-1] != " " and len(chart[4]) > len(chart[0].rstrip())
    assert lines[-1].split() == ["0", "9"]  # the x axis' ends


def test_more_points_than_columns_are_averaged_per_column():
    noisy = [(x, 1.0 if x % 2 else 3.0) for x in range(1000)]  # alternates: its mean is 2
    lines = render([Series("", noisy)], width=30, height=3)
    assert dots(lines[1]) and not dots(lines[0]) and not dots(lines[2]), lines


def test_plot_all_marks_each_item_where_it_starts(layout):
    write_metrics(layout, A, steps(A, 1, [5.0, 4.0, 3.5]))
    write_metrics(layout, B, steps(B, 4, [3.4, 3.0]))
    shown = trainctl(layout.root, "plot", "--all", "--width", "50")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout.splitlines()
    assert out[0] == "loss of 2 items: global steps 1-5, 5 -> 3"
    axis, marks = next((n, out[n + 1]) for n, row in enumerate(out) if "└" in row)
    assert out[axis].count("┬") == 2 and marks.split() == ["a", "b"]
    assert out[-2].split()[:2] == ["a", A] and out[-1].split()[:2] == ["b", B]


def test_plot_skips_unknown_kinds_and_counts_torn_lines(layout):
    write_metrics(layout, A, [*steps(A, 1, [5.0, 4.0]), b'{"step": 3, "glob\n',
                              {"kind": "eval", "set": "holdout", "step": 2, "eval_loss": 4.5},
                              {"kind": "something-newer", "step": 2, "loss": 99.0}])
    shown = trainctl(layout.root, "plot", A, "--width", "40")
    assert shown.returncode == 0, shown.stderr
    assert "5 -> 4" in shown.stdout.splitlines()[0]  # 99.0 of the unknown kind is not a loss
    assert "skipped 1 unreadable line(s)" in shown.stderr
    evals = trainctl(layout.root, "plot", A, "--metric", "eval_loss", "--width", "40")
    assert evals.returncode == 0 and "global steps 2-2, 4.5 -> 4.5" in evals.stdout


def test_nothing_to_plot_says_why(layout):
    shown = trainctl(layout.root, "plot")
    assert shown.returncode == 1 and "nothing to plot yet" in shown.stderr
    write_metrics(layout, A, steps(A, 1, [5.0]))
    no_eval = trainctl(layout.root, "plot", "--metric", "eval_loss")
    assert no_eval.returncode == 1 and "no eval_loss figures" in no_eval.stderr
    assert trainctl(layout.root, "plot", A, "--all").returncode == 2


def test_png_is_a_real_image(layout, tmp_path):
    pytest.importorskip("matplotlib", reason="the plot extra is not installed: pip install '.[plot]'")
    write_metrics(layout, A, steps(A, 1, [5.0, 4.0, 3.5, 3.2]))
    image = tmp_path / "loss.png"
    shown = trainctl(layout.root, "plot", A, "--png", str(image))
    assert shown.returncode == 0, shown.stderr
    data = image.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 600 and height >= 300


def test_png_without_matplotlib_says_how_to_get_it(layout, tmp_path):
    write_metrics(layout, A, steps(A, 1, [5.0, 4.0]))
    hidden = tmp_path / "no-matplotlib" / "matplotlib"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('not installed here')\n")
    shown = trainctl(layout.root, "plot", A, "--png", str(tmp_path / "x.png"),
                     env={"PYTHONPATH": str(hidden.parent)})
    assert shown.returncode == 1 and "pip install 'trainer[plot]'" in shown.stderr
    assert "loss of" in shown.stdout  # the terminal chart is still there
    assert not (tmp_path / "x.png").exists()
