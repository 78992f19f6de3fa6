"""trainctl's commands, one module per family; ``ctl/cli.py`` loads a module only when one of its
commands runs, so a plain ``trainctl status`` pays for nothing else."""
