"""The demo's config.toml: read by ``trainctl init --demo`` without importing torch."""

DEMO_CONFIG = """\
# Settings sized for the tiny demo model on a CPU (trainctl init --demo). Every other key
# keeps its default; the full list is in docs/configuration.md.

[model]
path = "models/base"

[train]
max_length = 256
micro_batch_size = 8
learning_rate = 0.001
warmup_steps = 10

[checkpoint]
every_steps = 20

[daemon]
min_free_bytes = 104857600   # 100 MiB: the demo runs anywhere; keep the 10 GiB default in production
"""
