"""The report in a real headless Chromium, with networking off: the page of a real daemon
run on the demo model, and pages of hostile names and reasons.

Skipped where /usr/bin/chromium is missing (Debian's chromium package; .ci/run installs it).
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from helpers import browser, hostile, png, report_base
from helpers.common import trainctl
from helpers.daemon_proc import DaemonProcess, enqueue_sample, small_config

from trainer.config import Config, default_config_toml
from trainer.report import build
from trainer.report.figures import EVAL, LOSS
from trainer.spool.layout import init_base

pytestmark = pytest.mark.skipif(browser.missing_reason() is not None, reason=browser.missing_reason() or "")


def _rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, demo_model):
    """A real daemon trains two items on the demo model, consolidates v001 and keeps the page
    (every_minutes tiny); one more item waits in the low queue; then `trainctl report`."""
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("report-demo")
    layout, _ = init_base(root / "base", default_config_toml())
    layout.config_file.write_text(small_config(daemon={"consolidate_when_idle": True}, checkpoint={"every_steps": 100},
                                               report={"every_minutes": 0.0001}))
    shutil.copytree(demo_model, layout.root / "models" / "base")
    done = [enqueue_sample(layout, root, records=24, seed=n, name=f"chat-{n}") for n in range(2)]
    daemon = DaemonProcess(layout, "--exit-when-idle")
    assert daemon.finish(timeout=300) == 0, daemon.output()
    kept = layout.root / "report.html"
    kept_page = {"exists": kept.exists(), "mode": stat.S_IMODE(os.stat(kept).st_mode) if kept.exists() else None,
                 "html": kept.read_text() if kept.exists() else ""}
    waiting = root / "waiting.jsonl"
    waiting.write_text('{"text": "later"}\n')
    result = trainctl(layout.root, "enqueue", "--priority", "low", str(waiting))
    assert result.returncode == 0, result.stderr
    result = trainctl(layout.root, "report")
    assert result.returncode == 0, result.stderr
    return {"layout": layout, "done": done, "page": Path(result.stdout.strip()), "kept": kept_page,
            "log": daemon.output()}


def test_the_daemon_kept_a_group_readable_copy_of_the_page(demo_run):
    kept = demo_run["kept"]
    assert kept["exists"] and kept["mode"] == 0o640
    assert all(item_id in kept["html"] for item_id in demo_run["done"])
    assert "report page: not written" not in demo_run["log"]


def test_the_demo_page_draws_its_charts_and_tables_in_a_real_browser_without_the_network(demo_run, tmp_path):
    page = demo_run["page"]
    visit = browser.visit(page, dump_dom=True)
    dom = browser.Dom(visit.output)
    lines = [p["d"] for p in dom.tags("path") if "line" in p.get("class", "")]
    assert lines and all(d.startswith("M") and d.count("L") >= 2 for d in lines), "every loss curve has points"
    done = dom.table_text("done")
    assert all(item_id in done for item_id in demo_run["done"]) and "chat-0.jsonl" in done and "chat-1.jsonl" in done
    assert "waiting.jsonl" in dom.table_text("queue")
    assert "v001" in dom.table_text("versions")
    assert not dom.tags("script")
    assert not [a for _, a in dom.elements if "src" in a or "href" in a], "nothing for the page to fetch"
    assert visit.requests == [], f"the page asked the network for {visit.requests}"

    shot = tmp_path / "page.png"
    visit = browser.visit(page, screenshot=shot, window=(1000, 1100))
    assert visit.requests == []
    rows = png.rows_with(shot.read_bytes(), _rgb(LOSS), tolerance=30)
    assert len(set(rows)) >= 100, f"the loss curves drew across {len(set(rows))} pixel rows (a legend is 4)"


def test_a_page_that_asks_the_network_is_caught(tmp_path):
    """The check above can fail: a page with an image on a web server is seen asking for it."""
    page = tmp_path / "canary.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://report-canary.example/x.png"></body></html>')
    visit = browser.visit(page, dump_dom=True)
    assert [r["url"] for r in visit.requests] == ["http://report-canary.example/x.png"]


def _page(tmp_path: Path, name: str, names: list[str], reasons: list[str]) -> Path:
    layout, _ = init_base(tmp_path / name, default_config_toml())
    report_base.build(layout, done=len(names), pending=len(names), failed=len(names), steps=20, days=30,
                      names=names, reasons=reasons)
    path = tmp_path / f"{name}.html"
    build.write(layout, build.render(layout, Config()), path)
    return path


MARKUP = ["<script>alert(1)", "<img src=x onerror=alert(2)>", '"><svg onload=alert(3)>',
          "</td></tr></table><iframe src=x>", "<style>body{display:none}</style>"]


def test_hostile_names_and_reasons_render_as_text_with_no_element_injected(tmp_path):
    hostile_names = [*MARKUP, *hostile.NAMES.values()]
    plain_names = [f"plain-{i}-{{n}}.jsonl" for i in range(len(hostile_names))]
    plain = browser.Dom(browser.visit(_page(tmp_path, "plain", plain_names, ["out of memory"] * 5),
                                      dump_dom=True).output)
    visit = browser.visit(_page(tmp_path, "hostile", hostile_names, MARKUP), dump_dom=True)
    dom = browser.Dom(visit.output)
    assert sorted(tag for tag, _ in dom.elements) == sorted(tag for tag, _ in plain.elements), \
        "the same elements as with plain names: none injected"
    assert not dom.tags("script") and not dom.tags("iframe") and not dom.tags("img")
    assert not [a for _, a in dom.elements if any(k.startswith("on") for k in a)]
    failures = dom.table_text("failures")
    for reason in MARKUP:
        assert reason in failures, f"{reason!r} shown as text"
    assert "\\x1b[31mred" in dom.table_text("queue") + dom.table_text("done") + dom.table_text("failed")
    assert visit.requests == []


def test_evaluation_per_version_shows_as_a_table_and_a_chart(tmp_path):
    page = _page(tmp_path, "eval", ["data-{n}.jsonl"], ["out of memory"])
    dom = browser.Dom(browser.visit(page, dump_dom=True).output)
    evaluation = dom.table_text("evaluation")
    assert all(v in evaluation for v in ("v001", "v002", "v003", "v004")) and "holdout" in evaluation
    assert "held back" in dom.table_text("versions") and "rose 27%" in dom.table_text("versions")
    assert len(dom.tags("details")) == 4 and "v002: from v001" in "".join(dom.text)
    assert [c for c in dom.tags("circle")], "evaluation results drawn as dots"
    shot = tmp_path / "eval.png"
    browser.visit(page, screenshot=shot, window=(1000, 2600))
    rows = png.rows_with(shot.read_bytes(), _rgb(EVAL), tolerance=30)
    assert len(set(rows)) >= 40, f"evaluation drew across {len(set(rows))} pixel rows"
