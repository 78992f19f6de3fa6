"""The training engine: continuous fine-tuning over items, with verified checkpoints.

One ``Engine`` lives as long as the daemon. ``start`` loads the model and restores the
newest valid checkpoint; ``prepare`` surveys an item; ``train`` runs optimizer steps over it
and asks the caller after every step whether to go on. All mutable training state lives in
``TrainState`` and is saved whole in every checkpoint, so killing the process at any moment
and starting again continues from the last checkpoint as if nothing had happened.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import orjson
import psutil
import torch

from trainer.config import CheckpointConfig, Config
from trainer.errors import DiskUnwritable, ItemFailed
from trainer.spool.fsutil import append_line, disk_refusal
from trainer.train import lineage, step, weights_io
from trainer.train import model as model_io
from trainer.train.checkpoint import Checkpoint, CheckpointStore
from trainer.train.data import Cursor, HeldOut, RowStream, survey
from trainer.train.examples import RecordEncoder
from trainer.train.leader import Leader
from trainer.train.packing import Row
from trainer.train.protocol import ItemPlan, Progress, TrainState
from trainer.train.schedule import lr_at, should_checkpoint
from trainer.train.weights_io import OPTIMIZER_FILE, WEIGHTS_FILE  # noqa: F401  (named from here too)
from trainer.train.world import World

log = logging.getLogger("trainer.engine")

LOSS_WINDOW = 50
STATE_FILE = "train_state.json"
RNG_FILE = "rng.pt"


def config_hash(config: Config) -> str:
    """Hash of what decides the numbers (model and optimisation), stored in every checkpoint."""
    return hashlib.sha256(orjson.dumps({"model": asdict(config.model), "train": asdict(config.train)},
                                       option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _versions() -> dict:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


class Engine:
    def __init__(self, base: Path, config: Config, world: World | None = None) -> None:
        self.base = base
        self.config = config
        # The processes this trainer runs on (one by default); see world.py for the step protocol.
        self.world = world or World()
        self.store = CheckpointStore(base / "checkpoints", keep_last=config.checkpoint.keep_last)
        self.state = TrainState()
        self.last_checkpoint: Checkpoint | None = None
        self._nonfinite_in_a_row = 0
        self._since_checkpoint = (0, time.monotonic())  # (optimizer steps, monotonic time)
        self._step_time: float | None = None
        self._process = psutil.Process()
        self.leader = Leader(self.world)  # the commands rank 0 posts the others (leader.py)
        self.metrics_dir = base / "metrics"
        self.base_eval_cache: dict[str, dict] = {}  # the base model's eval numbers by set (never change)
        # Called with the estimated size before every save; the daemon blocks there until the
        # disk has room (or raises to give up). The default does nothing.
        self.space_guard: Callable[[int], None] = lambda estimate: None
        # Called when the disk refused a write (full, over quota, read-only); the daemon blocks
        # there for a while (or raises to give up), then the write is tried again. Without a
        # daemon the refusal is raised.
        self.disk_wait: Callable[[DiskUnwritable], None] = _raise
        # Called often while an item is surveyed (a large file takes minutes): the daemon feeds
        # the watchdog there. The default does nothing.
        self.heartbeat: Callable[[], None] = lambda: None

    # --- start-up ------------------------------------------------------------------------

    def start(self) -> Checkpoint | None:
        """Load the model and restore the newest valid checkpoint (returned, or None)."""
        cfg = self.config.train
        seed_everything(cfg)
        swept = self.store.sweep_staging()
        if swept:
            log.info("removed %d interrupted checkpoint save(s): %s", len(swept), ", ".join(swept))
        checkpoint = self.store.latest_valid()
        # The checkpoint says which model it trains (a consolidation moves LoRA to a new base).
        base = _saved_state(checkpoint).get("base") if checkpoint is not None else None
        started = time.monotonic()
        self._load_model(base)
        self.load_seconds = time.monotonic() - started
        self.state = TrainState(micro_batch_size=cfg.micro_batch_size, base=base)
        if checkpoint is not None:
            self._restore(checkpoint)
            from trainer.train import releases

            releases.adopt_if_published(self, self.base / "models")
        self.share_with_followers(checkpoint.path if checkpoint is not None else None)
        return checkpoint

    @property
    def sharded(self) -> bool:
        """The ranks each hold a shard of the model (``sharding.py``), not all of it."""
        return self.world.distributed and self.config.distributed.strategy == "fsdp"

    def _load_model(self, base: str | None) -> None:
        cfg = self.config.train
        model_config = self.config.model if base is None else replace(self.config.model, path=base)
        loaded = model_io.load(self.base, model_config)
        self.model_path = model_io.model_dir(self.base, model_config)
        self.model, self.tokenizer, self.device = loaded.model, loaded.tokenizer, loaded.device
        if self.sharded:
            from trainer.train import sharding

            sharding.shard(self.model, self.device)
            if self.world.is_leader:
                sharding.mirror(self.model, self.leader.announce_forward)
        self.params = model_io.trainable_parameters(self.model)
        self.optimizer = torch.optim.AdamW(
            self.params.values(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
            fused=self.device.type == "cuda" and not self.sharded)
        self.encoder = RecordEncoder(self.tokenizer, max_length=cfg.max_length, overlong=cfg.overlong)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def rebase(self, base: str) -> Checkpoint:
        """Continue on a new base model (after a LoRA consolidation merged the adapter into
        it): fresh adapter, fresh optimizer, same training history; checkpointed at once."""
        self._load_model(base)
        self.state.base = base
        self.share_with_followers()
        return self.checkpoint()

    def continue_from(self, version: str, meta: dict, request: dict, requeue: list[dict]) -> Checkpoint:
        """Rollback: a new line of training from published version ``version`` (``meta``, its
        metadata). The model is loaded from the version's directory as the new base (LoRA: with
        a fresh adapter), the optimizer starts fresh, and the state starts at the version's
        step; all of it is one checkpoint, the newest by its line: until it is committed a
        restart finds the old line whole, after it the new one."""
        base = f"models/{version}"
        self._load_model(base)
        self.state = lineage.rolled_back(self.state, version, meta, base=base, request=request, requeue=requeue)
        self._nonfinite_in_a_row = 0
        self.share_with_followers()  # first: sharded, every rank writes the checkpoint
        self.checkpoint()
        log.info("rolled back to %s (step %d): line %d", version, self.state.global_step, self.state.line)
        return self.last_checkpoint

    def checkpoint_estimate(self) -> int:
        """Bytes the next checkpoint will take: the last one's size, or weights + Adam moments."""
        if self.last_checkpoint is not None:
            try:
                return sum(f.stat().st_size for f in self.last_checkpoint.path.iterdir())
            except OSError:
                pass
        return sum(p.numel() * 4 * 3 for p in self.params.values())

    def current_checkpoint(self) -> Checkpoint:
        """A checkpoint of exactly the weights in memory (saved now if steps were taken since)."""
        if self.last_checkpoint is None or self._since_checkpoint[0] > 0 or \
                self.last_checkpoint.step != self.state.global_step:
            return self.checkpoint()
        return self.last_checkpoint

    def make_room(self) -> None:
        self.store.retain(keep=2)  # the newest and one to fall back on if it fails verification

    def set_checkpoint_config(self, checkpoint: CheckpointConfig) -> None:
        self.config = replace(self.config, checkpoint=checkpoint)

    def snapshot(self, directory: Path, day: str, *, keep_days: int):
        from trainer.train import releases

        return releases.snapshot(self, directory, day, keep_days=keep_days)

    def consolidate(self, directory: Path, *, keep_versions: int):
        """The next version, evaluated first: one the regression gate refuses is published
        into ``models/.candidates/`` instead (the returned path says which)."""
        from trainer.train import release_eval, releases

        evaluation = release_eval.at_consolidation(self, directory) if self.config.eval.enabled else None
        held_back = evaluation is not None and not evaluation["gate"]["passed"]
        return releases.consolidate(self, directory, keep_versions=keep_versions,
                                    extra={"eval": evaluation} if evaluation else None, held_back=held_back)

    def memory(self) -> dict:
        gpu = None
        if torch.cuda.is_available():
            gpu = {"allocated": torch.cuda.memory_allocated(), "reserved": torch.cuda.memory_reserved()}
        return {"rss": self._process.memory_info().rss, "gpu": gpu}

    @property
    def is_lora(self) -> bool:
        return self.config.model.lora

    # --- checkpoints ---------------------------------------------------------------------

    def _write_checkpoint(self, directory: Path) -> None:
        if self.sharded:
            self.leader.tell("save", str(directory))
            weights_io.save_shards(self, directory)
        else:
            weights_io.write_whole(self, directory)
        torch.save(_rng_state(), directory / RNG_FILE)
        self.state.world_size = self.world.size
        (directory / STATE_FILE).write_bytes(orjson.dumps(asdict(self.state), option=orjson.OPT_INDENT_2))

    def checkpoint(self) -> Checkpoint:
        """Save the whole training state (never weights that are not finite).

        A save the disk refuses (filled meanwhile by someone else's files, out of inodes,
        remounted read-only) is never the item's fault: the store has removed what it had
        written, the daemon waits (``disk_wait``: blocked, heartbeating), and the same state is
        saved again, through the space guard, once the disk takes writes.
        """
        for name, p in ({} if self.sharded else self.params).items():  # sharded: in save_shards
            if not torch.isfinite(p).all():
                raise ItemFailed(f"refusing to checkpoint non-finite weights ({name})", transient=True)
        estimate = self.checkpoint_estimate()
        info = {"config_hash": config_hash(self.config), "versions": _versions(), "line": self.state.line,
                "item": (self.state.cursor or {}).get("item_id"), "tokens_seen": self.state.tokens_seen}
        refusals = 0
        while True:
            self.space_guard(estimate)
            try:
                self.last_checkpoint = self.store.save(self.state.global_step, self._write_checkpoint, info,
                                                       room_needed=estimate)
                break
            except DiskUnwritable as refused:
                if not refusals:
                    log.warning("checkpoint save at step %d refused by the disk (%s): saving again once it "
                                "takes writes", self.state.global_step, refused)
                refusals += 1
                self.disk_wait(refused)
        self._since_checkpoint = (0, time.monotonic())
        log.info("checkpoint %s saved at step %d", self.last_checkpoint.path.name, self.state.global_step)
        return self.last_checkpoint

    def until_written(self, write: Callable[[], None]) -> None:
        """Run a write the engine cannot go on without (a metrics line, models/LATEST); each
        time the disk refuses it, wait (``disk_wait``) and try again: nothing is skipped,
        nothing written twice."""
        while True:
            try:
                return write()
            except OSError as exc:
                refused = disk_refusal(exc)
                if refused is None:
                    raise
                self.disk_wait(refused)

    def _restore(self, checkpoint: Checkpoint) -> None:
        """The checkpoint's state; its weights too, unless sharded: every rank then takes its
        shard in ``share_with_followers``, which follows."""
        if not self.sharded:
            weights_io.load_whole(self, checkpoint.path)
        _set_rng_state(torch.load(checkpoint.path / RNG_FILE, weights_only=True))
        self.state = TrainState(**orjson.loads((checkpoint.path / STATE_FILE).read_bytes()))
        self.last_checkpoint = checkpoint
        self._since_checkpoint = (0, time.monotonic())
        if checkpoint.manifest.get("config_hash") != config_hash(self.config):
            log.warning("checkpoint %s was made with another model/train config; continuing with the "
                        "current one", checkpoint.path.name)
        log.info("restored checkpoint %s (step %d)", checkpoint.path.name, self.state.global_step)

    def rollback(self) -> None:
        """Back to the last checkpoint (or the loaded weights' state if there is none)."""
        checkpoint = self.store.latest_valid()
        if checkpoint is None:
            raise ItemFailed("weights became non-finite and there is no checkpoint to roll back to",
                             transient=False)
        self._restore(checkpoint)
        self.share_with_followers(checkpoint.path)

    # --- items ---------------------------------------------------------------------------

    def rows_per_step(self) -> int:
        return self.config.train.micro_batch_size * self.config.train.grad_accum_steps

    def prepare(self, item_id: str, sha256: str, data_path: Path) -> ItemPlan:
        """Survey an item: token statistics and step count; fail it if nothing can be learned.

        An item the checkpoint is in the middle of was surveyed before the interruption: its
        counts come from the cursor, so resuming does not tokenize the whole file first.
        """
        saved = self.state.cursor
        if (saved and saved.get("item_id") == item_id and saved.get("sha256") == sha256
                and saved.get("total_steps")):
            return ItemPlan(item_id, sha256, data_path, saved["rows_per_epoch"], saved["total_steps"], {}, None,
                            holdout=saved.get("holdout", 0.0))
        holdout = self.config.eval.holdout_fraction if self.config.eval.enabled else 0.0
        stats, rows, examples, held = _survey(self, data_path, holdout)
        if held.records and not stats.examples:
            holdout = 0.0  # so small an item that its held-out share is all of it: train on it all
            stats, rows, examples, held = _survey(self, data_path, holdout)
        if held.in_eval_sets:
            log.warning("%s: %d training record(s) also in an eval set (left out of that set's numbers)",
                        item_id, held.in_eval_sets)
        summary = {**stats.summary(), "held_out": held.records, "holdout_fraction": holdout,
                   "in_eval_sets": held.in_eval_sets}
        if summary["target_tokens"] == 0:
            why = "every example would train on zero tokens"
            if summary["rejected"]:
                why += f" ({summary['rejected']} rejected as longer than train.max_length)"
            elif summary["truncated"]:
                why += f" ({summary['truncated']} truncated to train.max_length before any answer)"
            raise ItemFailed(why, transient=False)
        steps = math.ceil(rows / self.rows_per_step()) * self.config.train.epochs_per_item
        return ItemPlan(item_id, sha256, data_path, rows, steps, summary, examples, holdout=holdout)

    def _cursor_for(self, plan: ItemPlan) -> Cursor:
        saved = self.state.cursor
        if saved and saved.get("item_id") == plan.item_id and saved.get("sha256") == plan.sha256:
            lineage.item_started(self.state, plan.item_id, plan.sha256, resumed_step=saved.get("item_step", 0))
            return Cursor.from_json(saved)
        if saved:
            log.warning("the checkpoint was in the middle of item %s; starting %s from its beginning "
                        "(the updates already made from %s stay)", saved.get("item_id"), plan.item_id,
                        saved.get("item_id"))
        lineage.item_started(self.state, plan.item_id, plan.sha256)
        return Cursor(plan.item_id, plan.sha256, rows_per_epoch=plan.rows_per_epoch, total_steps=plan.total_steps,
                      holdout=plan.holdout)

    def already_trained(self, plan: ItemPlan) -> bool:
        """True when the last checkpoint already finished this exact item (a crash came between
        that checkpoint and the item being marked done): training it again would duplicate it."""
        done = self.state.last_completed
        return bool(done) and done.get("item_id") == plan.item_id and done.get("sha256") == plan.sha256

    def train(self, plan: ItemPlan, after_step: Callable[[Progress], bool]) -> bool:
        """Train on the item from its cursor. ``after_step`` returns False to stop early; then
        a checkpoint is saved and False returned. True when the item is finished (and saved)."""
        if self.already_trained(plan):
            return True
        cursor = self._cursor_for(plan)
        self.state.cursor = cursor.to_json()
        self._since_checkpoint = (0, time.monotonic())
        self._step_time = None
        metrics = _MetricsFile(self.metrics_dir / f"{plan.item_id}.jsonl")
        epochs = self.config.train.epochs_per_item
        while cursor.epoch < epochs:
            stream = RowStream(plan.data_path, self.encoder, cursor, self.config.train.max_length, self.pad_id,
                               plan.examples)
            while rows := stream.take(self.rows_per_step()):
                progress = self._optimizer_step(rows, cursor, plan)
                steps_since, since = self._since_checkpoint
                self._since_checkpoint = (steps_since + 1, since)
                saved = should_checkpoint(steps_since + 1, time.monotonic() - since, self.config.checkpoint)
                progress = _with(progress, checkpointed=saved)
                # The step's line first: killed between a save and its line, the step was in the
                # checkpoint, never redone, and missing from the metrics for good. Killed mid-save
                # instead, the step is redone and its line appears twice, as after any crash.
                self.until_written(lambda: metrics.append(progress))
                if saved:
                    self.checkpoint()
                if not after_step(progress):
                    if not saved:
                        self.checkpoint()
                    return False
            cursor.epoch += 1
            cursor.records_done, cursor.packer, cursor.pending_rows = 0, None, []
            self.state.cursor = cursor.to_json()
        # Evaluated before the item's last checkpoint, which keeps the numbers (last_eval).
        self.state.last_eval = _evaluate_holdout(self, plan, cursor.holdout, metrics)
        self.state.cursor = None
        self.state.last_completed = {"item_id": plan.item_id, "sha256": plan.sha256}
        self.state.items_completed += 1
        # In the same checkpoint as the item's last step: the lineage cannot disagree with the weights.
        lineage.item_completed(self.state, plan.item_id, plan.sha256, lineage.item_facts(plan.data_path))
        self.checkpoint()
        return True

    # --- one optimizer step --------------------------------------------------------------

    def _optimizer_step(self, rows: list[Row], cursor: Cursor, plan: ItemPlan) -> Progress:
        started = time.perf_counter()
        targets = sum(row.target_count for row in rows)
        tokens = sum(row.content_length for row in rows)
        lr = lr_at(self.state.global_step, self.config.train, cursor.item_step, plan.total_steps)
        loss, grad_norm, applied = None, None, False
        if targets:
            mine = self.leader.hand_out(rows, targets, lr, self.state.global_step)
            with self.leader.stepping():
                loss, grad_norm, applied = step.apply_step(self, mine, targets, lr, self.state.global_step,
                                                           rows_each=-(-len(rows) // self.world.size))
            self._nonfinite_in_a_row = 0 if applied else self._nonfinite_in_a_row + 1
        cursor.item_step += 1
        if applied:
            self.state.global_step += 1
            self.state.tokens_seen += tokens
            self.state.loss_window = (self.state.loss_window + [loss])[-LOSS_WINDOW:]
        self.state.cursor = cursor.to_json()
        if self._nonfinite_in_a_row >= self.config.train.max_nonfinite_steps:
            count = self._nonfinite_in_a_row
            self._nonfinite_in_a_row = 0
            self.rollback()
            raise ItemFailed(f"loss or gradient not finite for {count} steps in a row; weights rolled back "
                             f"to the last checkpoint", transient=True)
        elapsed = time.perf_counter() - started
        # Smoothed step time for the ETA: one slow step (a checkpoint, a GC pause) must not
        # make it jump.
        self._step_time = elapsed if self._step_time is None else 0.9 * self._step_time + 0.1 * elapsed
        gpu = 0
        if self.device.type == "cuda":
            gpu = torch.cuda.max_memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return Progress(plan.item_id, cursor.item_step, plan.total_steps, self.state.global_step, loss,
                        self.state.smoothed_loss, lr, grad_norm, tokens, tokens / elapsed if elapsed else 0.0,
                        elapsed, not applied, False,
                        eta_s=max(0, plan.total_steps - cursor.item_step) * self._step_time,
                        host_rss_bytes=self._process.memory_info().rss, gpu_bytes=gpu)

    def share_with_followers(self, source: Path | None = None) -> None:
        """After the weights changed other than by a step (start, rollback, a new base).
        Sharded: every rank takes its shard of checkpoint ``source`` (``take_shards``)."""
        if self.sharded:
            return weights_io.share_shards(self, source)
        self.leader.share(self.state.base, self.state.micro_batch_size, list(self.params.values()),
                          self.optimizer.state_dict() if self.world.distributed else {})

    def keep_alive(self) -> None:
        self.leader.keep_alive(self.config.distributed.timeout_seconds)

    def world_view(self) -> dict | None:
        view = self.leader.view()
        return None if view is None else {**view, "strategy": self.config.distributed.strategy}

    def release_followers(self) -> None:
        self.leader.release()

class _MetricsFile:
    """Per-item metrics, one JSON line per optimizer step, for people to plot. Appended whole
    or not at all (``fsutil.append_line``); a step redone after a crash appears again (its
    global_step says so)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def append(self, progress: Progress) -> None:
        self.append_record(progress.record())

    def append_record(self, record: dict) -> None:
        from trainer.timefmt import iso, utc_now

        append_line(self.path, orjson.dumps({"t": iso(utc_now()), **record}) + b"\n")


def _survey(engine: Engine, data_path: Path, holdout: float):
    """``data.survey`` of the item's training share, noting its records that a named eval set holds."""
    from trainer.train import evalsets

    keys: frozenset[bytes] = frozenset()
    if engine.config.eval.enabled:
        keys = frozenset(evalsets.record_key(r) for s in evalsets.named_sets(engine.base, engine.config.spool)
                         for r in s.records)
    held = HeldOut()

    def tick() -> None:
        engine.heartbeat()
        engine.keep_alive()  # the other ranks wait for the first step meanwhile

    stats, rows, examples = survey(data_path, engine.encoder, engine.config.train.max_length, engine.pad_id,
                                   holdout=holdout, eval_keys=keys, held=held, tick=tick)
    return stats, rows, examples, held


def _evaluate_holdout(engine: Engine, plan: ItemPlan, holdout: float, metrics: _MetricsFile) -> dict | None:
    """The item's held-out share scored by the weights just trained: a metrics line, and the
    numbers for the state (checkpointed with the item's end) that the daemon records."""
    if holdout <= 0 or not engine.config.eval.enabled:
        return None
    from trainer.train import release_eval

    numbers = release_eval.holdout(engine, plan.data_path, holdout)
    if numbers is None:
        return None
    record = {"kind": "eval", "set": "holdout", "step": engine.state.global_step,
              "eval_loss": numbers["loss"], "eval_perplexity": numbers["perplexity"],
              "eval_token_accuracy": numbers["token_accuracy"], "tokens": numbers["tokens"]}
    engine.until_written(lambda: metrics.append_record(record))
    log.info("%s held-out eval: loss %.4f, token accuracy %.3f (%d tokens)", plan.item_id, numbers["loss"],
             numbers["token_accuracy"], numbers["tokens"])
    return {"item_id": plan.item_id, **record, "records": numbers["records"]}


def seed_everything(cfg) -> None:
    """The random state a run starts from, and deterministic kernels when asked (every rank
    of a distributed run calls it too)."""
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        # Multi-threaded CPU kernels were seen to differ in the last bits between a run and
        # its resumption (about 1 run in 3); one thread makes CPU results bitwise repeatable.
        torch.set_num_threads(1)
    random.seed(cfg.seed)
    # numpy too: its state is checkpointed with the others, and unseeded it started from OS
    # entropy, so two runs of the same items never had the same random state.
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)


def _raise(refused: DiskUnwritable) -> None:
    raise refused


def _with(progress: Progress, **changes) -> Progress:
    return replace(progress, **changes)


def _saved_state(checkpoint: Checkpoint) -> dict:
    return orjson.loads((checkpoint.path / STATE_FILE).read_bytes())


def _rng_state() -> dict:
    import numpy as np

    # Plain types and tensors only, so the file loads with torch.load(weights_only=True).
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np

    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
