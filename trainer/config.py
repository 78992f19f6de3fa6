"""The config file: one TOML file parsed into frozen, keyword-only dataclasses.

Every field carries its documentation in its metadata; the commented default config that
``trainctl init`` writes and ``docs/configuration.md`` are both rendered from it, so the
three can never disagree. Unknown keys and bad values are errors naming the key and why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError

GiB = 1 << 30
MiB = 1 << 20


def _setting(default: Any, doc: str, *, minimum: float | None = None,
             choices: tuple[str, ...] | None = None, maximum: float | None = None) -> Any:
    return field(default=default, metadata={"doc": doc, "min": minimum, "choices": choices, "max": maximum})


@dataclass(frozen=True, kw_only=True)
class SpoolConfig:
    """[spool]: how files are accepted into the queue."""

    inbox_settle_seconds: float = _setting(
        5.0,
        "A file copied into inbox/ is taken once its size and mtime have not changed for this "
        "long, timed on the monotonic clock (a file renamed into inbox/ is taken at once; one "
        "already there when the daemon starts counts the time since its mtime).",
        minimum=0,
    )
    max_file_bytes: int = _setting(
        16 * GiB, "Largest training file accepted, in bytes.", minimum=1
    )
    max_line_bytes: int = _setting(
        8 * MiB,
        "Longest JSONL line (one record) accepted, in bytes; checked without reading the "
        "line into memory.",
        minimum=2,
    )
    max_attempts: int = _setting(
        3,
        "An item whose training was interrupted this many times (crash, OOM kill, transient "
        "error) goes to failed/ instead of back to the queue.",
        minimum=1,
    )


@dataclass(frozen=True, kw_only=True)
class DaemonConfig:
    """[daemon]: how the daemon reports that it is alive."""

    heartbeat_seconds: float = _setting(
        5.0,
        "How often the daemon refreshes the heartbeat in its state file when nothing else "
        "happens.",
        minimum=0.1,
    )
    stale_after_seconds: float = _setting(
        120.0,
        "A heartbeat older than this (on the monotonic clock, so a wall-clock jump changes "
        "nothing) makes `trainctl status` report the daemon unresponsive. Keep it above the "
        "longest optimizer step.",
        minimum=1,
    )
    min_free_bytes: int = _setting(
        10 * GiB, "Free space always left on the base dir's filesystem: before claiming an item and "
                  "before every checkpoint, free space must cover this plus the checkpoint estimate "
                  "times free_space_margin, or the daemon waits (state blocked).", minimum=0)
    free_space_margin: float = _setting(1.5, "Multiplier on the estimated checkpoint size.", minimum=1)
    disk_check_seconds: float = _setting(30.0, "How often a daemon blocked on disk space looks again.",
                                         minimum=0.1)
    retry_delay_seconds: float = _setting(
        30.0, "First delay before a transiently failed item is tried again; it doubles with each "
              "attempt (at most an hour). Timed on the monotonic clock.", minimum=0)
    max_consecutive_errors: int = _setting(
        5, "Unexpected errors in a row in the main loop before the daemon exits non-zero for systemd "
           "to restart it.", minimum=1)
    memory_growth_bytes: int = _setting(
        2 * GiB, "If resident memory after items has grown by more than this since the first item, "
                 "and keeps growing, the daemon checkpoints and exits for a clean restart.", minimum=0)
    consolidate_when_idle: bool = _setting(
        True, "Consolidate into a new version whenever the queue drains after new items were trained.")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """[model]: what is trained, and how it is loaded."""

    path: str = _setting(
        "models/base",
        "The Hugging Face model directory to start from (relative paths are inside the base dir). "
        "Loaded from local files only; `trainctl init --demo` builds a tiny one here.",
    )
    lora: bool = _setting(False, "Train a LoRA adapter (peft) instead of every weight.")
    lora_rank: int = _setting(16, "LoRA rank r.", minimum=1)
    lora_alpha: float = _setting(32.0, "LoRA alpha (the update is scaled by alpha / r).", minimum=0)
    lora_dropout: float = _setting(0.0, "Dropout on the LoRA path.", minimum=0)
    lora_targets: str = _setting(
        "all-linear", "Modules that get adapters: all-linear, or comma-separated module names.")
    load_in_4bit: bool = _setting(
        False, "QLoRA: load the base weights in 4 bits (needs CUDA and bitsandbytes, and lora = true).")
    dtype: str = _setting(
        "auto", "Weights' dtype: auto (bfloat16 on a GPU that supports it, else float32), "
        "float32 or bfloat16.", choices=("auto", "float32", "bfloat16"))
    device: str = _setting("auto", "auto (cuda if available), cpu, cuda, or cuda:N.")
    attention: str = _setting(
        "auto", "The attention kernel: auto = sdpa on the CPU; on a GPU flash_attention_3, flash_attention_2 "
                "or flex_attention, the first one installed, so that packed rows never build a dense mask "
                "(docs/training.md#packing).",
        choices=("auto", "sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"))


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """[train]: the optimisation."""

    max_length: int = _setting(1024, "Tokens per packed row; longer examples are truncated or rejected.",
                               minimum=8)
    overlong: str = _setting("truncate", "What happens to an example over max_length.",
                             choices=("truncate", "reject"))
    micro_batch_size: int = _setting(8, "Rows per forward pass (halved by itself after an out-of-memory "
                                        "error, with accumulation doubled to keep the batch).", minimum=1)
    grad_accum_steps: int = _setting(1, "Micro-batches per optimizer step.", minimum=1)
    learning_rate: float = _setting(1e-4, "Peak learning rate.", minimum=0)
    warmup_steps: int = _setting(20, "Linear warm-up, in optimizer steps counted over the model's whole "
                                     "life (not per item).", minimum=0)
    schedule: str = _setting(
        "constant", "After warm-up: constant (continuous training never decays towards zero), or "
        "cosine-per-item (down to min_lr_ratio within each item, back up for the next).",
        choices=("constant", "cosine-per-item"))
    min_lr_ratio: float = _setting(0.1, "Lowest learning rate of cosine-per-item, as a fraction of the peak.",
                                   minimum=0)
    weight_decay: float = _setting(0.0, "AdamW weight decay.", minimum=0)
    max_grad_norm: float = _setting(1.0, "Gradient clipping norm (0 disables clipping).", minimum=0)
    epochs_per_item: int = _setting(1, "Passes over each item's data.", minimum=1)
    seed: int = _setting(0, "Seed for the first run; later runs restore the random state from checkpoints.")
    max_nonfinite_steps: int = _setting(
        4, "After this many optimizer steps in a row with a non-finite loss or gradient, the item fails "
           "as transient and the weights roll back to the last checkpoint.", minimum=1)
    deterministic: bool = _setting(
        False, "Use deterministic kernels (slower on GPU); on CPU a resumed run is then bit-identical "
               "to an uninterrupted one.")
    log_every_steps: int = _setting(10, "A progress line in the log every this many optimizer steps.",
                                    minimum=1)


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """[checkpoint]: how often training state is saved, and how much is kept."""

    every_steps: int = _setting(100, "Save every this many optimizer steps (0: never by count).", minimum=0)
    every_minutes: float = _setting(30.0, "Save at least this often while training (0: never by time).",
                                    minimum=0)
    keep_last: int = _setting(3, "Checkpoints kept (never fewer than the latest two).", minimum=2)


@dataclass(frozen=True, kw_only=True)
class SnapshotConfig:
    """[snapshot]: the daily, self-contained copy of the model."""

    at: str = _setting("03:00", "Local time (HH:MM) after which the day's snapshot is taken, once per "
                                "calendar day.")
    keep_days: int = _setting(7, "Snapshots kept, newest first (0 keeps all).", minimum=0)


@dataclass(frozen=True, kw_only=True)
class ConsolidateConfig:
    """[consolidate]: publishing the trained model as a new version."""

    keep_versions: int = _setting(5, "Published versions kept, newest first (the one in use is always "
                                     "kept; 0 keeps all).", minimum=0)


@dataclass(frozen=True, kw_only=True)
class EventsConfig:
    """[events]: the event log (`trainctl history`), one segment per UTC month."""

    keep_months: int = _setting(
        0, "Whole months of events kept before the current one; older monthly segments are removed "
           "by the daemon once a day (0 keeps everything).", minimum=0)


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """[metrics]: figures for the tools people already run (metrics/ID.jsonl is always written)."""

    prometheus_textfile: str = _setting(
        "", "A file the daemon rewrites atomically in Prometheus' text format, at most once per optimizer "
            "step and once a second, for node_exporter's textfile collector (e.g. "
            "/var/lib/prometheus/node-exporter/{name}.prom, where {name} becomes the base dir's name: "
            "trainer, trainer-1... for instances sharing one config). The daemon must be able to write "
            "in its directory (docs/operations.md). Empty: off. No port is opened.")
    tensorboard: bool = _setting(
        False, "Write TensorBoard event files per item under tensorboard/ID/ in the base dir "
               "(needs the tensorboard package: pip install 'trainer[tensorboard]').")


@dataclass(frozen=True, kw_only=True)
class ReportConfig:
    """[report]: the HTML page of the trainer's state (`trainctl report`)."""

    every_minutes: float = _setting(
        0.0, "Keep BASE_DIR/report.html current: the daemon rewrites it at most this often, when idle and "
             "between optimizer steps (atomically, readable by the daemon's group; a failed write is logged "
             "and changes nothing else). 0: only `trainctl report` writes it.", minimum=0)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """[eval]: held-out evaluation, sample outputs and the regression gate (docs/training.md#evaluation)."""

    enabled: bool = _setting(
        True, "Evaluate at the end of each item (its held-out share) and at every consolidation (every "
              "eval set, the regression gate, sample outputs).")
    holdout_fraction: float = _setting(
        0.02, "Share of each item's records held out of training and evaluated instead, chosen by a hash "
              "of each record (no random state: the same records whatever restarts happen). 0 holds "
              "nothing out. Read when an item starts; an item in progress keeps its own.",
        minimum=0, maximum=0.5)
    max_tokens: int = _setting(
        8192, "Most tokens evaluated per eval set per model at one evaluation (records in a fixed order "
              "until this many): keeps evaluation to a few percent of training time. The gate compares "
              "models on the very same tokens, so their difference is far steadier than either number.",
        minimum=256)
    max_new_tokens: int = _setting(
        32, "Tokens generated (greedily) per sample prompt of eval/prompts.jsonl.", minimum=1)
    max_prompts: int = _setting(8, "Sample prompts answered at each evaluation (the first ones of "
                                   "eval/prompts.jsonl).", minimum=0)
    gate: bool = _setting(
        True, "Hold a consolidated version back (models/.candidates/) when it is worse than the current "
              "version or the base on any eval set by more than gate_tolerance.")
    gate_tolerance: float = _setting(
        0.02, "Relative eval-loss increase the gate lets through (0.02: 2 %). Epoch-to-epoch noise of a "
              "real model's held-out loss is well under 1 %; a poisoned or mislabelled item raises it by "
              "several percent.", minimum=0)


@dataclass(frozen=True, kw_only=True)
class DistributedConfig:
    """[distributed]: one trainer over several processes, GPUs and nodes (docs/operations.md#distributed-training)."""

    nproc: int = _setting(
        1, "Worker processes on this node, launched by torch's elastic agent inside the daemon (one per GPU; "
           "on the CPU, each takes a share of the cores). 1: no launcher, the daemon trains in its own "
           "process. `trainer run --nproc N` overrides it.", minimum=1)
    nnodes: int = _setting(
        1, "Nodes in the group: the same unit and config on each, with its own node_rank.", minimum=1)
    node_rank: int = _setting(
        0, "This node's place in the group. Node 0 holds the queue and writes everything; the other nodes "
           "only train (they need the base model, not the queue).", minimum=0)
    rendezvous: str = _setting(
        "", "HOST:PORT where node 0 listens for the others to join (TCP; open this port and the ranks' ports "
            "between the nodes). Empty on one node: a free port on 127.0.0.1.")
    backend: str = _setting(
        "auto", "The collectives' backend: auto = nccl where CUDA is available, gloo otherwise.",
        choices=("auto", "nccl", "gloo"))
    strategy: str = _setting(
        "ddp", "How the ranks hold the model. ddp: every rank holds all of it and the gradients are summed "
               "(full fine-tune and LoRA). fsdp: torch's FSDP2 shards the weights, gradients and optimizer "
               "state across the ranks, for a full fine-tune that does not fit one device; checkpoints are "
               "then sharded (torch.distributed.checkpoint), snapshots and versions stay plain model "
               "directories (docs/training.md#sharded-training).", choices=("ddp", "fsdp"))
    max_restarts: int = _setting(
        3, "Times the launcher restarts the whole group after a worker was lost, from the last checkpoint, "
           "before the daemon exits and systemd's Restart= takes over. Each one counts as an interrupted "
           "attempt of the item in training (spool.max_attempts).", minimum=0)
    timeout_seconds: float = _setting(
        1800.0, "Longest a rank waits inside a collective. It must exceed the longest work rank 0 does alone "
                "between two steps (a checkpoint save, an evaluation, a consolidation); idle and paused, "
                "rank 0 keeps the group alive well within it.", minimum=10)
    shutdown_seconds: int = _setting(
        300, "After a worker was lost, how long the launcher lets the others finish what they are doing (at "
             "most one step and one checkpoint save) before it kills them. Keep it below the unit's "
             "TimeoutStopSec.", minimum=1)


@dataclass(frozen=True, kw_only=True)
class Config:
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    snapshot: SnapshotConfig = field(default_factory=SnapshotConfig)
    consolidate: ConsolidateConfig = field(default_factory=ConsolidateConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def _check_time_of_day(key: str, value: str) -> None:
    hours, _, minutes = value.partition(":")
    if not (hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60 and len(minutes) == 2):
        raise ConfigError(f"{key}: expected a time of day as HH:MM, got {value!r}")


def _check_value(key: str, value: Any, spec: dataclasses.Field) -> Any:
    expected = type(spec.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
        raise ConfigError(
            f"{key}: expected {expected.__name__}, got {type(value).__name__} {value!r}"
        )
    choices = spec.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}; got {value!r}")
    if spec.name == "at":
        _check_time_of_day(key, value)
    minimum = spec.metadata.get("min")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}: must be >= {minimum}, got {value!r}")
    maximum = spec.metadata.get("max")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{key}: must be <= {maximum}, got {value!r}")
    return value


def parse_config(data: dict[str, Any], source: str = "config") -> Config:
    """Build a ``Config`` from parsed TOML, rejecting unknown sections, keys and bad values."""
    sections = {}
    for name, table in data.items():
        if name not in SECTIONS:
            raise ConfigError(
                f"{source}: unknown section [{name}] (known: {', '.join(sorted(SECTIONS))})"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {name} must be a [{name}] table")
        section_cls = SECTIONS[name]
        specs = {f.name: f for f in dataclasses.fields(section_cls)}
        values = {}
        for key, value in table.items():
            if key not in specs:
                raise ConfigError(
                    f"{source}: unknown key {name}.{key} (known: {', '.join(sorted(specs))})"
                )
            values[key] = _check_value(f"{source}: {name}.{key}", value, specs[key])
        sections[name] = section_cls(**values)
    return Config(**sections)


def _has_settings(text: str) -> bool:
    """Whether a TOML text sets anything: False for blank lines, comments and known section
    headers only (the commented default ``trainctl init`` writes), which mean every default."""
    sections = {f"[{f.name}]" for f in dataclasses.fields(Config)}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and line not in sections:
            return True
    return False


def load_config(path: Path) -> Config:
    """Read and parse ``path``; a missing file means every default."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return Config()
    except PermissionError as exc:
        raise ConfigError(f"{path}: cannot read the config (permission denied)") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{path}: is a directory, not a config file") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror})") from exc
    if not _has_settings(text):  # the commented default init writes: every default
        return Config()
    import tomllib  # only for a file that sets something: ~2 ms of trainctl's start-up otherwise

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    return parse_config(data, str(path))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _wrap(text: str, prefix: str, width: int = 92) -> list[str]:
    lines, line = [], prefix
    for word in text.split():
        if len(line) + len(word) + 1 > width and line != prefix:
            lines.append(line.rstrip())
            line = prefix
        line += word + " "
    lines.append(line.rstrip())
    return lines


def default_config_toml() -> str:
    """The commented config ``trainctl init`` writes: every key, commented out, at its default."""
    out = [
        "# trainer configuration. Every key is shown at its default, commented out;",
        "# uncomment and change what you need. Reference: docs/configuration.md",
    ]
    for name, section_cls in SECTIONS.items():
        out += ["", f"[{name}]"]
        for spec in dataclasses.fields(section_cls):
            out += _wrap(spec.metadata["doc"], "# ")
            out.append(f"# {spec.name} = {_toml_value(spec.default)}")
    return "\n".join(out) + "\n"


def reference_markdown() -> str:
    """The body of docs/configuration.md's reference section."""
    out = []
    for name, section_cls in SECTIONS.items():
        summary = section_cls.__doc__.split(":", 1)[1].strip()
        out += [f"### `[{name}]`", "", summary[0].upper() + summary[1:], ""]
        out += ["| key | default | meaning |", "|---|---|---|"]
        for spec in dataclasses.fields(section_cls):
            out.append(
                f"| `{spec.name}` | `{_toml_value(spec.default)}` | {spec.metadata['doc']} |"
            )
        out.append("")
    return "\n".join(out)
