"""trainer: keeps fine-tuning a causal language model on the files people queue.

The torch-free core (spool, control protocol, validation, config) lives in this package's
top-level modules; everything that imports torch lives in ``trainer.train``.
"""

__version__ = "0.1.0"
