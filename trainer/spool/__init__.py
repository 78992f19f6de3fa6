"""The base directory on disk: its layout, the queue of items, control requests, the event log.

Torch-free, and everything ``docs/spool.md`` describes. Every state change is a rename under
a brief lock; every file is written whole (tmp, fsync, rename) or not at all.
"""
