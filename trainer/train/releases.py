"""Publishing the model: daily snapshots and consolidated versions, HF-loadable and verified.

    snapshots/2026-11-28/     the day's model (full fine-tuning: config, tokenizer and the
                              checkpoint's weights hard-linked; LoRA: the merged model, and the
                              adapter alone in adapter/)
    models/base/              the model training started from (model.path)
    models/v001/ v002/ ...    consolidated versions, each with trainer_version.json (step,
                              parent, lineage) and a model card README.md; LoRA: adapter/ too
    models/LATEST             the newest version's name

Every file published is group-readable (0640): members of the daemon's group load them
with plain ``from_pretrained``. The checkpoint's weights are hard-linked only when their
mode is that already (the engine writes them so); otherwise they are cloned (a reflink where
the filesystem has them) or copied.

Every publication is staged beside its destination, verified by loading it back and
comparing its output with the model in memory, then renamed into place: an interrupted one
leaves no half snapshot or version, and nothing older is ever touched before the new one is
complete.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import orjson
import torch

from trainer.errors import NotEnoughSpace
from trainer.spool import candidates
from trainer.spool import versions as published
from trainer.spool.fsutil import (
    FILE_MODE,
    disk_refusal,
    free_bytes,
    fsync_dir,
    remove_dirs,
    write_atomic,
)
from trainer.timefmt import iso, utc_now
from trainer.train import card, lineage, weights_io
from trainer.train.engine import WEIGHTS_FILE, Engine, config_hash

log = logging.getLogger("trainer.publish")

STAGING = ".staging-"
VERSION_FILE = published.VERSION_FILE
ADAPTER_DIR = "adapter"  # LoRA: the adapter alone, beside the merged model
FICLONE = 0x40049409  # ioctl: a copy-on-write clone (btrfs, XFS); EOPNOTSUPP elsewhere
_WEIGHT_FILES = re.compile(r".*\.(safetensors|bin|pt|pth)$|.*\.safetensors\.index\.json$|.*\.bin\.index\.json$")
_VERSION = re.compile(r"v(\d{3,})")


def _check_space(path: Path, need: int) -> None:
    have = free_bytes(path)
    if have < need:
        raise NotEnoughSpace(path, need, have)


def _publish_weights(src: Path, dest: Path) -> None:
    """Hard-link an immutable file (instant, no space) when its mode is the one published
    files have (a link shares it); otherwise, or across filesystems, a clone or a copy."""
    if stat.S_IMODE(os.stat(src).st_mode) == FILE_MODE:
        try:
            os.link(src, dest)
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
    _clone_or_copy(src, dest)


def _clone_or_copy(src: Path, dest: Path) -> None:
    with open(src, "rb") as source, open(dest, "wb") as target:
        try:
            fcntl.ioctl(target.fileno(), FICLONE, source.fileno())
            return
        except OSError:
            pass  # no reflinks here: an ordinary copy
    shutil.copyfile(src, dest)


def _group_readable(directory: Path) -> None:
    """Every file published gets FILE_MODE, whatever wrote it (safetensors makes 0600 files).
    A hard link already has it (``_publish_weights`` links only then)."""
    for path in directory.rglob("*"):
        st = path.lstat()
        if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != FILE_MODE:
            os.chmod(path, FILE_MODE)


def _write_metadata(directory: Path, meta: dict, *, base_model: str, adapter_base: str | None = None) -> None:
    """trainer_version.json and the model card (the adapter's too, for LoRA), from one dict."""
    name = directory.name.removeprefix(STAGING)
    (directory / VERSION_FILE).write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    (directory / card.CARD_FILE).write_text(card.render(meta, name=name, base_model=base_model))
    if adapter_base is not None:
        (directory / ADAPTER_DIR / card.CARD_FILE).write_text(
            card.render(meta, name=f"{name}/{ADAPTER_DIR}", base_model=adapter_base, adapter=True))


def _copy_model_files(model_dir: Path, dest: Path) -> None:
    """Config, tokenizer and chat template of the model trained (not its weights)."""
    for file in model_dir.iterdir():
        if file.is_file() and not _WEIGHT_FILES.fullmatch(file.name) and file.name != VERSION_FILE:
            shutil.copy2(file, dest / file.name)


def _probe_logits(model, tokenizer, device) -> torch.Tensor:
    ids = tokenizer("The quick check of a published model.", return_tensors="pt")["input_ids"].to(device)
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.float().cpu()


def _verify(engine: Engine, directory: Path, *, adapter_base: Path | None = None) -> None:
    """Load the published model back and check it computes what the engine's model does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    base = adapter_base or directory
    loaded = AutoModelForCausalLM.from_pretrained(base, local_files_only=True, dtype=engine.model.dtype)
    if adapter_base is not None:
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(loaded, directory)
    loaded.to(engine.device).eval()
    was_training = engine.model.training
    engine.model.eval()
    try:
        expected = _probe_logits(engine.model, tokenizer, engine.device)
    finally:
        engine.model.train(was_training)
    got = _probe_logits(loaded, tokenizer, engine.device)
    tolerance = 1e-3 if engine.model.dtype == torch.float32 else 5e-2
    if not torch.allclose(got, expected, atol=tolerance, rtol=tolerance):
        raise RuntimeError(f"{directory.name}: the published model does not reproduce the trained one "
                           f"(max difference {float((got - expected).abs().max()):.3g})")


def _export(engine: Engine, dest: Path) -> None:
    """An HF-loadable model dir of the weights in memory. Full fine-tuning: the checkpoint's
    weights and the trained model's config and tokenizer. LoRA: the adapter merged into its
    base (what plain transformers loads), and the adapter alone in adapter/ (for PEFT, and
    serving engines that hot-load adapters onto the base it names)."""
    if engine.is_lora:
        merged = _merged_copy(engine)
        merged.save_pretrained(dest)
        del merged
        engine.tokenizer.save_pretrained(dest)
        adapter = dest / ADAPTER_DIR
        engine.model.save_pretrained(adapter)
        config = orjson.loads((adapter / "adapter_config.json").read_bytes())
        config["base_model_name_or_path"] = str(engine.model_path)
        (adapter / "adapter_config.json").write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
        engine.tokenizer.save_pretrained(adapter)
        return
    if engine.sharded:
        return _export_gathered(engine, dest)
    checkpoint = engine.current_checkpoint()
    _publish_weights(checkpoint.path / WEIGHTS_FILE, dest / "model.safetensors")
    _copy_model_files(engine.model_path, dest)


def _export_gathered(engine: Engine, dest: Path) -> None:
    """Sharded: the whole weights gathered on the leader, written as model.safetensors and read
    back: every tensor must equal what was gathered (a second copy of a model too big for one
    device is not loaded to compare outputs, as ``_verify`` does)."""
    from safetensors.torch import load_file, save_file

    weights = {name: tensor.contiguous() for name, tensor in weights_io.full_weights(engine).items()}
    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "pt"})
    _copy_model_files(engine.model_path, dest)
    written = load_file(str(dest / "model.safetensors"))
    if written.keys() != weights.keys() or not all(torch.equal(written[k], weights[k]) for k in weights):
        raise RuntimeError(f"{dest.name}: model.safetensors does not hold the weights gathered from the ranks")


def _weights_size(engine: Engine) -> int:
    return sum(p.numel() * p.element_size() for p in engine.model.parameters())


def _room_needed(engine: Engine) -> int:
    """A LoRA publication writes the whole merged model; a full fine-tune's is a hard link,
    unless the last checkpoint's weights are not 0640 (written before they were): a copy."""
    if engine.is_lora or engine.sharded:
        return _weights_size(engine) + (64 << 20)
    last = engine.last_checkpoint
    try:
        linkable = last is not None and stat.S_IMODE(os.stat(last.path / WEIGHTS_FILE).st_mode) == FILE_MODE
    except OSError:
        linkable = False
    return (16 << 20) + (0 if linkable else _weights_size(engine))


def _verified(engine: Engine, staging: Path) -> None:
    if not engine.sharded:  # sharded: checked as written (_export_gathered)
        _verify(engine, staging)
    if engine.is_lora:
        _verify(engine, staging / ADAPTER_DIR, adapter_base=engine.model_path)
    _group_readable(staging)


def _publish(staging: Path, final: Path) -> None:
    for file in staging.rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    for directory in [staging, *(d for d in staging.rglob("*") if d.is_dir())]:
        fsync_dir(directory)
    os.rename(staging, final)
    fsync_dir(final.parent)


def _build_and_publish(staging: Path, final: Path, build: Callable[[Path], None], *, room_needed: int) -> None:
    """Build a publication in ``staging``, then rename it to ``final``. On any failure the
    staging dir is removed; a disk that refused a write (full, over quota, read-only) raises
    ``DiskUnwritable``, whatever library wrapped the OS error (``room_needed``: what the
    publication was expected to take, for when only the free space left can tell)."""
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        build(staging)
        _publish(staging, final)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        refused = disk_refusal(exc, staging.parent, room_needed=room_needed) if isinstance(exc, Exception) else None
        if refused is not None:
            raise refused from exc
        raise


def snapshot(engine: Engine, root: Path, day: str, *, keep_days: int) -> Path | None:
    """Take the snapshot for ``day`` (YYYY-MM-DD) unless it exists; returns it (None: existed)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / day
    if final.exists():
        return None
    need = _room_needed(engine)
    _check_space(root, need)

    def build(staging: Path) -> None:
        _export(engine, staging)
        meta = _provenance(engine, kind="snapshot", **_line_facts(engine, models=engine.base / "models"))
        _write_metadata(staging, meta, base_model=_base_model(engine),
                        adapter_base=str(engine.model_path) if engine.is_lora else None)
        _verified(engine, staging)

    _build_and_publish(root / f"{STAGING}{day}", final, build, room_needed=need)
    days = sorted(n for n in os.listdir(root) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", n))  # ISO dates sort by time
    _retain(root, keep_days, days)
    log.info("snapshot %s taken at step %d", day, engine.state.global_step)
    return final


def _base_model(engine: Engine) -> str:
    """The model the whole family descends from (model.path as configured)."""
    return str(engine.config.model.path)


def _provenance(engine: Engine, **extra) -> dict:
    return {"created_at": iso(utc_now()), "global_step": engine.state.global_step,
            "tokens_seen": engine.state.tokens_seen, "items_completed": engine.state.items_completed,
            "smoothed_loss": engine.state.smoothed_loss, "trained_from": str(engine.model_path),
            "lora": engine.is_lora, **extra}


def _line_facts(engine: Engine, *, models: Path) -> dict:
    """``parent`` and ``lineage``: what this training line last published, and what it trained
    since (a snapshot's say what it holds beyond that version)."""
    existing = versions(models)
    return {"parent": lineage.parent(engine.state, existing[-1] if existing else None),
            "lineage": lineage.summary(engine.state, base=_base_model(engine), config_hash=config_hash(engine.config))}


def versions(models: Path) -> list[str]:
    """Published versions, oldest first (by number, never by mtime)."""
    return published.names(models)


def _already_published(engine: Engine, models: Path) -> str | None:
    """The version that holds exactly the weights in memory: made from this line at this step
    (a crash came after its rename and before the state that follows it was saved)."""
    state = engine.state
    if state.global_step <= state.version_step and state.version is not None:
        return None
    for name in reversed(versions(models)):
        meta = published.read(models, name) or {}
        made = meta.get("lineage") if isinstance(meta.get("lineage"), dict) else {}
        if made.get("line") == state.line and meta.get("global_step") == state.global_step:
            return name
    return None


def adopt_if_published(engine: Engine, models: Path) -> str | None:
    """At start: if the weights restored are already published (a full fine-tune's publication
    saves no checkpoint; or a crash came right after the rename), that version is this line's
    latest, as if the consolidation had just finished: never published again, and the parent
    of the next one."""
    name = _already_published(engine, models)
    if name is not None:
        log.info("the weights restored are published as %s: the next version's parent", name)
        _after_publication(engine, models, name)
    return name


def consolidate(engine: Engine, models: Path, *, keep_versions: int, extra: dict | None = None,
                held_back: bool = False) -> Path:
    """Publish the trained model as the next version ``vNNN``, with its parent (the version
    this line last published or was rolled back to) and its lineage (the items trained since).

    LoRA: the adapter is merged into its base into a full model, verified, and training then
    continues on that version with a fresh adapter. Full fine-tuning: the current weights are
    published (hard-linked from the checkpoint). Earlier versions stay, up to retention.

    ``extra`` is merged into its metadata (evaluation: "eval"). ``held_back``: the regression
    gate refused it: it is published the same way into ``models/.candidates/vNNN`` instead,
    ``LATEST`` is left alone and training goes on as it was (LoRA: no new base; the next
    version's parent stays the last one published).

    Weights already published (``_already_published``) are never published twice.
    """
    models.mkdir(parents=True, exist_ok=True)
    state = engine.state
    if state.version is not None and state.global_step <= state.version_step and (models / state.version).is_dir():
        log.info("nothing trained since %s: no new version", state.version)  # never two at one step
        return models / state.version
    name = None if held_back else _already_published(engine, models)
    if name is None:
        name = candidates.next_version(models)  # numbers count held-back candidates too: never reused
        destination = models / candidates.CANDIDATES if held_back else models
        destination.mkdir(exist_ok=True)
        need = _room_needed(engine)
        _check_space(models, need)
        meta = _provenance(engine, kind="consolidated", version=name, **_line_facts(engine, models=models),
                           **(extra or {}))

        def build(staging: Path) -> None:
            _export(engine, staging)
            _write_metadata(staging, meta, base_model=_base_model(engine),
                            adapter_base=str(engine.model_path) if engine.is_lora else None)
            _verified(engine, staging)

        _build_and_publish(destination / f"{STAGING}{name}", destination / name, build, room_needed=need)
        if held_back:
            log.warning("%s held back by the regression gate (models/%s/%s)", name, candidates.CANDIDATES, name)
            return destination / name
    else:
        log.info("%s already holds these weights: not published again", name)
    # The version is published: LATEST must follow it, waiting for the disk if need be (making
    # the version again would publish it twice).
    engine.until_written(lambda: write_atomic(models, models / "LATEST", (name + "\n").encode()))
    _after_publication(engine, models, name)
    in_use = Path(engine.state.base).name if engine.state.base else None
    _retain(models, keep_versions, versions(models), {in_use, name})
    log.info("consolidated into %s at step %d", name, engine.state.global_step)
    return models / name


def _after_publication(engine: Engine, models: Path, name: str) -> None:
    """The version is the next one's parent. LoRA: training goes on on the merged model with a
    fresh adapter (checkpointed at once). Full fine-tuning saves nothing now: a restart before
    the next checkpoint finds the version by its line and step (``adopt_if_published``)."""
    lineage.published(engine.state, name)
    if engine.is_lora:
        version = models / name
        engine.rebase(str(version.relative_to(engine.base)) if version.is_relative_to(engine.base)
                      else str(version))


def _merged_copy(engine: Engine):
    """The base with the adapter merged in, as a separate model (the engine's is untouched)."""
    import copy

    clone = copy.deepcopy(engine.model)
    return clone.merge_and_unload()


def _retain(root: Path, keep: int, oldest_first: list[str], protected: set[str | None] = frozenset()) -> list[str]:
    """Delete all but the newest ``keep`` of ``oldest_first`` (0 keeps all), never a protected one."""
    if keep <= 0:
        return []
    doomed = [n for n in oldest_first[: max(0, len(oldest_first) - keep)] if n not in protected]
    remove_dirs(root, doomed)
    return doomed
