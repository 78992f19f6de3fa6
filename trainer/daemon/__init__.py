"""The ``trainer`` daemon: the service loop, items, housekeeping, systemd integration.

Imports no torch at import time: the engine (``trainer.train``) is loaded when the daemon
starts training.
"""
