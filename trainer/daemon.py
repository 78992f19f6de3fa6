"""The trainer daemon's entry point.

The daemon itself (single instance, recovery, the control loop, sd_notify) is the next
piece of work; until it lands this entry point says so rather than pretending.
"""

import sys

from trainer.exitcodes import ExitCode


def main() -> None:
    print("trainer: the daemon is not implemented yet in this release; trainctl manages the "
          "queue meanwhile (see README)", file=sys.stderr)
    sys.exit(ExitCode.CONFIG)
