"""trainer: keeps fine-tuning a causal language model on the files people queue.

The packages are the layers (docs/architecture.md is the map): the leaves in this package
(errors, states, exit codes, ids, time formats, config), ``spool`` (the base dir on disk),
``intake`` (files become items), ``daemon`` (the service), ``train`` (everything that
imports torch) and ``demo``.
"""

__version__ = "0.1.0"
