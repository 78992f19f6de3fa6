"""The copy of the report page the daemon keeps current (``[report] every_minutes``).

Display only: the page is rendered and replaced atomically (``trainer.report.build``) at
most every ``every_minutes``, when the loop is idle and between optimizer steps; a render
or a write that fails (a full disk, a damaged file the report trips on) is logged once and
tried again at the next due time. It never fails an item, blocks, or stops the daemon.
Nothing listens: people open the file (``docs/operations.md``).
"""

from __future__ import annotations

import logging

from trainer.config import Config
from trainer.spool.layout import Layout

log = logging.getLogger("trainer.daemon")


def page_due(last: float | None, now: float, every_minutes: float) -> bool:
    """Whether the page is due, on the monotonic clock (0 minutes: never)."""
    if every_minutes <= 0:
        return False
    return last is None or now - last >= every_minutes * 60


class ReportPage:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._last: float | None = None
        self._failing = False  # said once per run of failures, not at every try

    def refresh_if_due(self, config: Config, monotonic: float) -> bool:
        """Rewrite BASE/report.html if due; True if it was written."""
        if not page_due(self._last, monotonic, config.report.every_minutes):
            return False
        self._last = monotonic  # a failure waits for the next due time too: no retry at every step
        from trainer.report import build  # only when the page is on: its imports cost nothing otherwise

        try:
            build.write(self.layout, build.render(self.layout, config), build.default_path(self.layout))
        except Exception as exc:  # noqa: BLE001  (display only: nothing may fail because of the page)
            if not self._failing:
                log.warning("report page: not written (%s: %s); tried again in %g min", type(exc).__name__, exc,
                            config.report.every_minutes)
                self._failing = True
            return False
        if self._failing:
            log.info("report page: written again")
            self._failing = False
        return True
