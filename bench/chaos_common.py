"""What the chaos scripts share: a work dir with the demo model built in it, and how a run ends."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import orjson


def run_on_demo_model(prefix: str, keep: Path | None, experiment: Callable[[Path, Path], dict]) -> None:
    """Build the demo model in ``keep`` (or a temp dir, removed after), run ``experiment(work,
    model)``, print its result as JSON and exit 0 only if it says ``ok``."""
    from trainer.train.demo_model import build_demo_model

    work = keep or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = experiment(work, build_demo_model(work / "demo" / "base"))
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    sys.exit(0 if result["ok"] else 1)
