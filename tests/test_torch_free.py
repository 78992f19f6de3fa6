"""trainctl and the shared library never import torch, transformers or safetensors.torch."""

from __future__ import annotations

import subprocess
import sys

from helpers.common import REPO

HEAVY = ("torch", "transformers", "safetensors.torch", "peft")

PROBE = """
import sys
from ctl.cli import cli
import trainer.spool.queue, trainer.intake.inbox, trainer.spool.sweep, trainer.spool.status, trainer.spool.control, trainer.spool.lock
import trainer.daemon.service, trainer.daemon.main, trainer.daemon.sinks, trainer.daemon.prometheus
import trainer.demo.run, trainer.demo.sample_data, trainer.spool.candidates, trainer.gate
from trainer.errors import TrainerError
commands = [["init", "--demo"], ["enqueue", sys.argv[2]], ["status", "--json"], ["list", "--all"],
            ["history"], ["pause"], ["resume"], ["wait", "--idle", "--timeout", "0"], ["logs"], ["plot", "--all"], ["report"],
            ["eval", "--json", "base"], ["promote", "v001"], ["discard", "v001"]]
for args in commands:
    try:
        cli.main(["--base-dir", sys.argv[1], *args], standalone_mode=False)
    except (SystemExit, TrainerError):
        pass
heavy = [m for m in %r if m in sys.modules]
print("HEAVY:" + ",".join(heavy))
""" % (HEAVY,)


def test_trainctl_commands_import_no_torch(tmp_path, chat_file):
    """init --demo builds a model and eval scores one, with torch, in a child process: never in
    trainctl's own."""
    result = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "b"), str(chat_file())],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "HEAVY:\n" in result.stdout, result.stdout
    assert '"version": "base"' in result.stdout, "eval scored the base in its child process"
    assert (tmp_path / "b" / "models" / "base" / "config.json").exists(), "the demo model was built"
