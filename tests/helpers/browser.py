"""Headless Chromium for the report tests: a page loaded from file:// with networking off,
its DOM after rendering, a screenshot, and the requests the page itself made (from
Chromium's net log).

Networking is off three ways: a proxy that refuses every connection, a resolver that finds
no host, and the background services (sync, component updates...) turned off. Chromium
still tries a few requests of its own (a clock check, an account probe): those are marked
in the net log with the initiator "not an origin"; anything a page asks for carries the
page's origin (``null`` for file://) and is what ``page_requests`` returns.

Run as a script it takes a screenshot: ``python tests/helpers/browser.py PAGE.html OUT.png``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_OWN = "not an origin"  # the net log's initiator of Chromium's own background requests


def missing_reason() -> str | None:
    if not CHROMIUM.exists():
        return (f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium; "
                f".ci/run does) to render the report in a real browser")
    return None


def _argv(profile: Path, netlog: Path, window: tuple[int, int]) -> list[str]:
    return [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
            "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={profile}", f"--log-net-log={netlog}", "--hide-scrollbars",
            f"--window-size={window[0]},{window[1]}"]


@dataclass
class Visit:
    output: str  # stdout: the DOM with --dump-dom
    requests: list[dict] = field(default_factory=list)  # what the page asked the network for


def visit(page: Path, *, dump_dom: bool = False, screenshot: Path | None = None,
          window: tuple[int, int] = (1100, 1500), timeout: float = 120) -> Visit:
    """Load ``page`` once in a fresh profile: ``dump_dom`` prints the DOM, ``screenshot`` writes a PNG."""
    with tempfile.TemporaryDirectory(prefix="report-browser-") as tmp:
        netlog = Path(tmp) / "net.json"
        argv = _argv(Path(tmp) / "profile", netlog, window)
        if dump_dom:
            argv.append("--dump-dom")
        if screenshot is not None:
            argv.append(f"--screenshot={screenshot}")
        argv.append(page.absolute().as_uri())
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "HOME": tmp})
        if result.returncode != 0:
            raise AssertionError(f"chromium exited {result.returncode}:\n{result.stderr[-3000:]}")
        return Visit(result.stdout, page_requests(netlog))


def page_requests(netlog: Path) -> list[dict]:
    """Every URL request in the net log that was not Chromium's own (see the module's docstring)."""
    data = json.loads(netlog.read_text())
    names = {number: name for name, number in data["constants"]["logEventTypes"].items()}
    found = []
    for event in data["events"]:
        params = event.get("params") or {}
        if names.get(event["type"]) == "URL_REQUEST_START_JOB" and "url" in params:
            if params.get("initiator") != BROWSER_OWN:
                found.append(params)
    return found


class Dom(HTMLParser):
    """Every element (tag and attributes) and the text inside each table, by the table's class."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.tables: dict[str, list[str]] = {}
        self._table: list[str] | None = None
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs).get("class") or "", [])

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        self.text.append(data)
        if self._table is not None:
            self._table.append(data)

    def table_text(self, cls: str) -> str:
        return "\n".join(self.tables.get(cls, []))

    def tags(self, name: str) -> list[dict]:
        return [attrs for tag, attrs in self.elements if tag == name]


if __name__ == "__main__":
    reason = missing_reason()
    if reason:
        sys.exit(reason)
    visit(Path(sys.argv[1]), screenshot=Path(sys.argv[2]).absolute(), window=(1100, 1300))
    print(sys.argv[2])
