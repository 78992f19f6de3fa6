"""The report page without a browser: the downsampler, escaping, tolerance of what the base
dir holds, the cache, and `trainctl report` as a real subprocess."""

from __future__ import annotations

import math
import os
import random
import stat

import orjson
import pytest
from helpers import hostile, report_base
from helpers.browser import Dom
from helpers.common import trainctl

from trainer.config import Config
from trainer.report import build, charts, curves, figures
from trainer.report.downsample import minmax
from trainer.report.page import text
from trainer.states import ItemState


# --- the downsampler -------------------------------------------------------------------------

def test_a_single_spike_among_a_million_points_survives_downsampling_to_800_buckets():
    rng = random.Random(7)
    spike_at = rng.randrange(1_000_000)
    points = [(float(x), 1.0 + rng.random() * 0.01) for x in range(1_000_000)]
    points[spike_at] = (float(spike_at), 99.0)
    points[spike_at + 1] = (float(spike_at + 1), -5.0)  # a dip right beside it too
    out = minmax(points, 800)
    assert len(out) <= 1600
    assert (float(spike_at), 99.0) in out and (float(spike_at + 1), -5.0) in out
    assert [x for x, _ in out] == sorted(x for x, _ in out), "the line still runs forward"
    assert out[0][0] < 1250 and out[-1][0] > 1_000_000 - 1250, "both ends of the range are drawn"


def test_every_bucket_keeps_its_true_min_and_max():
    points = [(float(x), math.sin(x / 37.0) + (x % 11) * 0.01) for x in range(10_000)]
    out = minmax(points, 50)
    width = 9999 / 50
    for bucket in range(50):
        inside = [y for x, y in points if min(49, int(x / width)) == bucket]
        kept = [y for x, y in out if min(49, int(x / width)) == bucket]
        assert min(kept) == min(inside) and max(kept) == max(inside)


def test_short_series_pass_unchanged_and_non_finite_losses_are_dropped():
    assert minmax([(1.0, 2.0), (2.0, 3.0)], 10) == [(1.0, 2.0), (2.0, 3.0)]
    assert minmax([(1.0, float("nan")), (2.0, float("inf")), (3.0, 1.0), (4.0, None)], 10) == [(3.0, 1.0)]


# --- escaping --------------------------------------------------------------------------------

MARKUP = ["<script>alert(1)", "<img src=x onerror=alert(2)>", '"><svg onload=alert(3)>', "</td></tr></table><b>",
          "a & b &amp; <!-- c"]


@pytest.mark.parametrize("value", MARKUP + list(hostile.NAMES.values()))
def test_text_escapes_markup_and_control_characters(value):
    escaped = text(value)
    assert "<" not in escaped and ">" not in escaped and '"' not in escaped
    assert not any(ord(c) < 0x20 or 0x202A <= ord(c) <= 0x202E for c in escaped)


def test_chart_labels_are_escaped():
    chart = charts.Chart('<script>t</script>', "x<", "y>", [charts.Series('"><b>', "#000", [(0, 1), (1, 2)])],
                         markers=[charts.Marker(0.5, "<img src=x onerror=alert(1)>")])
    svg = charts.render(chart)
    assert "<script" not in svg and "<img" not in svg and "<b>" not in svg
    assert "&lt;img src=x onerror=alert(1)&gt;" in svg


def test_hostile_names_and_reasons_leave_the_page_with_only_our_elements(layout):
    names = [*MARKUP, *hostile.NAMES.values()]
    report_base.build(layout, done=len(names), pending=len(names), failed=len(names), steps=5, days=3,
                      names=names, reasons=MARKUP)
    html = build.render(layout, Config())
    dom = Dom(html)
    assert {tag for tag, _ in dom.elements} <= {
        "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "span", "section", "table",
        "thead", "tbody", "tr", "th", "td", "svg", "path", "text", "rect", "circle", "g", "figure", "figcaption",
        "details", "summary", "div"}
    assert not [attrs for _, attrs in dom.elements if any(k.startswith("on") or k in ("src", "href") for k in attrs)]
    shown = "".join(dom.text)
    for reason in MARKUP:
        assert reason in shown, f"{reason!r} is shown as text"


# --- what the base dir holds -----------------------------------------------------------------

def test_versions_without_eval_or_lineage_and_damaged_metadata_still_render(layout):
    models = layout.root / "models"
    (models / "v001").mkdir(parents=True)
    (models / "v001" / "trainer_version.json").write_bytes(orjson.dumps({"created_at": "2026-01-01T00:00:00+00:00",
                                                                         "global_step": 10, "kind": "consolidated"}))
    (models / "v002").mkdir()
    (models / "v002" / "trainer_version.json").write_bytes(b"{not json")
    (models / "v003").mkdir()
    (models / "v003" / "trainer_version.json").write_bytes(b'["a list"]')
    (models / "v004").mkdir()  # no metadata at all
    (models / "v005").mkdir()
    (models / "v005" / "trainer_version.json").write_bytes(orjson.dumps({"eval": {"sets": "oops", "gate": 3},
                                                                         "lineage": {"items": [1, None], "steps": 7}}))
    dom = Dom(build.render(layout, Config()))
    versions = dom.table_text("versions")
    assert all(f"v00{n}" in versions for n in range(1, 6))
    assert "unreadable" in versions and "not a JSON object" in versions and "no trainer_version.json" in versions


def test_metric_lines_of_unknown_kinds_or_torn_are_skipped():
    raw = (b'{"step": 1, "global_step": 1, "loss": 2.0, "t": "x"}\n{"kind": "eval", "step": 1, "eval_loss": 1.5}\n'
           b'{"kind": "future", "step": 9, "loss": 99}\n{"step": 2, "glob\n'
           b'{"step": 3, "global_step": 3, "loss": 1.0}\n')
    curve = curves.parse_lines(raw)
    assert curve.steps == [(1.0, 2.0), (3.0, 1.0)] and curve.evals == [(1.0, 1.5)]


def test_the_cache_is_used_for_unchanged_metrics_and_refreshed_for_changed_ones(layout):
    ids = report_base.build(layout, done=3, pending=0, failed=0, steps=10, days=1)
    first = build.render(layout, Config())
    cached = curves.load_cache(layout)["items"]
    assert set(cached) == set(ids["done"])
    # A changed file (the active item's, growing) is read again; the others come from the cache.
    grown = curves.metrics_dir(layout) / f"{ids['done'][0]}.jsonl"
    with open(grown, "ab") as fh:
        fh.write(b'{"step": 11, "global_step": 100000, "loss": 7.0}\n')
    build.render(layout, Config())
    assert curves.load_cache(layout)["items"][ids["done"][0]]["last"] == 100000
    # Without a cache (or with a damaged one) the page is the same.
    curves.cache_path(layout).write_bytes(b"garbage")
    again = build.render(layout, Config())
    assert _without_times(again) == _without_times(build.render(layout, Config(), use_cache=False))
    assert _without_times(first) != _without_times(again)


def _without_times(html: str) -> str:
    import re

    return re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00|\d+m\d\ds|\d+h\d\dm", "", html)  # times of reading


# --- trainctl report -------------------------------------------------------------------------

def test_trainctl_report_writes_the_page_atomically_group_readable_and_prints_its_path(layout, tmp_path):
    report_base.build(layout, done=2, pending=1, failed=1, steps=5, days=1)
    result = trainctl(layout.root, "report")
    assert result.returncode == 0, result.stderr
    page = layout.root / "report.html"
    assert result.stdout.strip() == str(page)
    assert stat.S_IMODE(os.stat(page).st_mode) == 0o640
    assert page.read_text().startswith("<!DOCTYPE html>")
    assert not [p for p in layout.tmp.iterdir()], "nothing left in tmp/"

    out = tmp_path / "elsewhere" / "r.html"
    out.parent.mkdir()
    assert trainctl(layout.root, "report", "-o", str(out)).returncode == 0 and out.exists()
    to_stdout = trainctl(layout.root, "report", "-o", "-", "--since", "2h")
    assert to_stdout.returncode == 0 and to_stdout.stdout.startswith("<!DOCTYPE html>")
    assert "since " in to_stdout.stdout


def test_trainctl_report_refuses_a_bad_since_in_one_line(layout):
    result = trainctl(layout.root, "report", "--since", "yesterday-ish")
    assert result.returncode == 2 and "--since" in result.stderr and "Traceback" not in result.stderr


def test_trainctl_report_to_a_missing_directory_is_one_line(layout, tmp_path):
    result = trainctl(layout.root, "report", "-o", str(tmp_path / "no" / "such" / "r.html"))
    assert result.returncode == 1 and "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


# --- the life chart --------------------------------------------------------------------------

def test_a_spike_survives_the_cached_reduction_of_many_items(layout):
    report_base.build(layout, done=120, pending=0, failed=0, steps=50, days=10)
    summaries, _ = curves.summaries(layout, {})
    chart = figures.life(summaries, None)
    assert max(y for _, y in chart.series[0].points) == report_base.SPIKE
    assert len(chart.series[0].points) <= 2 * figures.LIFE_BUCKETS
    assert len(chart.markers) == 120 and chart.series[1].dots, "item starts marked, evaluations as dots"


def test_a_few_items_are_drawn_from_their_whole_curves(layout):
    report_base.build(layout, done=3, pending=0, failed=0, steps=300, days=1)
    dom = Dom(build.render(layout, Config()))
    life = next(p["d"] for p in dom.tags("path") if "line" in p.get("class", ""))
    assert life.count("L") == 3 * 300 - 1, "every step, not 16 buckets an item"


def test_disk_use_is_walked_again_only_when_its_figures_are_ten_minutes_old(layout):
    from trainer import clock

    start = clock.read()
    first = Dom(build.render(layout, Config(), now=start)).table_text("disk")
    (layout.root / "checkpoints").mkdir()
    (layout.root / "checkpoints" / "big").write_bytes(b"x" * (3 << 20))
    soon = Dom(build.render(layout, Config(), now=start._replace(monotonic=start.monotonic + 60))).table_text("disk")
    later = Dom(build.render(layout, Config(), now=start._replace(monotonic=start.monotonic + 601))).table_text("disk")
    assert "checkpoints\n0 B" in first and "checkpoints\n0 B" in soon
    assert "checkpoints\n3.0 MiB" in later


def test_a_fifo_put_in_place_of_the_files_the_report_reads_never_blocks_it(layout):
    report_base.build(layout, done=2, pending=0, failed=0, steps=5, days=1)
    done = sorted(p.name for p in layout.state_dir(ItemState.DONE).iterdir())
    for path in (layout.root / "models" / "LATEST", curves.cache_path(layout),
                 curves.metrics_dir(layout) / f"{done[0]}.jsonl"):
        path.unlink(missing_ok=True)
        os.mkfifo(path)
    html = build.render(layout, Config())  # would hang on a fifo opened for reading without O_NONBLOCK
    assert done[1] in html
