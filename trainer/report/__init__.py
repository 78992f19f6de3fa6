"""The report page: one self-contained HTML file of the trainer's state (``trainctl report``,
and the copy the daemon keeps with ``[report] every_minutes``). Reads the base dir only."""
