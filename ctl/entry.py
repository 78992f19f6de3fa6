"""Where the ``trainctl`` script and ``python -m ctl`` start.

trainctl lives for a moment, and most of what it allocates it allocates while importing click
and its own modules: objects that live as long as the process, none of them garbage. The
cyclic garbage collector would walk them over and over while they load, and all of them once
more as the interpreter exits (a plain ``python -c "import click, orjson"`` spends ~15 M of its
~180 M instructions on that). So the collector is off while they load, they are then frozen out
of its sight (``gc.freeze``), and it is back on for whatever the command allocates itself
(``status --watch``, ``wait`` and ``logs --follow`` run for hours).
"""

from __future__ import annotations

import gc


def main(argv: list[str] | None = None) -> None:
    gc.disable()
    from ctl.cli import main as run

    gc.freeze()
    gc.enable()
    run(argv)
