"""Every on-disk file the library reads, filled with garbage: a clear error, never a crash."""

from __future__ import annotations

import json

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer import clock
from trainer.config import Config, load_config
from trainer.errors import TrainerError
from trainer.intake import enqueue
from trainer.spool import control, events, queue
from trainer.spool.layout import open_base
from trainer.spool.status import collect
from trainer.states import ItemState

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
# Garbage: raw bytes, JSON of the wrong shape, and near-misses of the real format.
garbage = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["schema", "id", "priority", "attempts", "errors", "state",
                                     "heartbeat_at", "item", "format", "version", "t", "event"]),
                    json_values, max_size=8).map(lambda v: json.dumps(v).encode()),
)
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(content=garbage)
def test_garbage_meta_never_crashes_list_find_status_or_claim(layout, limits, chat_file, content):
    item_id = enqueue.enqueue(layout, chat_file(), limits=limits).id
    item = queue.find(layout, item_id)
    item.meta_path.write_bytes(content)
    listed = queue.list_items(layout, list(ItemState))
    assert [i.id for i in listed] == [item_id]
    assert listed[0].meta is not None or listed[0].meta_problem
    collect(layout, Config(), clock.read())
    try:
        claimed = queue.claim_next(layout)
    except TrainerError:
        claimed = None
    if claimed is not None:
        queue.complete(layout, item_id)
    queue.remove(layout, item_id)


@SETTINGS
@given(content=garbage)
def test_garbage_daemon_state_is_reported_not_raised(layout, content):
    layout.daemon_state.write_bytes(content)
    state, problem = control.read_state(layout)
    assert state is None or isinstance(state, dict)
    report = collect(layout, Config(), clock.read())
    assert report["daemon"]["liveness"] == "not-running"


@SETTINGS
@given(content=garbage, name=st.sampled_from(["pause.json", "skip.json", "stop.json"]))
def test_garbage_control_requests_still_parse_as_requests(layout, content, name):
    (layout.control / name).write_bytes(content)
    requests = control.read_requests(layout)
    assert getattr(requests, name.removesuffix(".json")) is not None
    control.decide(requests, "some-id")
    (layout.control / name).unlink()


event_lines = st.one_of(
    st.builds(lambda n, i: orjson.dumps({"t": f"2026-11-28T10:{n % 60:02d}:00.000000+00:00", "event": "claimed",
                                         "id": f"item-{i}"}), st.integers(0, 59), st.integers(0, 3)),
    garbage, st.just(b""), st.just(b"\r"))


@SETTINGS
@given(lines=st.lists(event_lines, max_size=40), last=st.integers(1, 50), block=st.integers(1, 64),
       item=st.sampled_from([None, "item-1"]), torn=st.booleans())
def test_the_last_n_events_read_backwards_are_the_tail_of_a_forward_read(layout, lines, last, block, item, torn):
    data = b"\n".join(lines) + (b"" if torn else b"\n")
    (layout.events_dir / "2026-11.jsonl").write_bytes(data)
    forward = events.read(layout, item_id=item).events
    original = events.BACKWARD_BLOCK
    events.BACKWARD_BLOCK = block  # block edges everywhere
    try:
        backward = events.read(layout, item_id=item, last=last).events
    finally:
        events.BACKWARD_BLOCK = original
    assert backward == forward[-last:]


@SETTINGS
@given(lines=st.lists(garbage, max_size=10))
def test_garbage_event_lines_are_skipped_and_counted(layout, lines):
    (layout.events_dir / "2026-11.jsonl").write_bytes(b"\n".join(lines))
    log = events.read(layout)
    assert all(isinstance(e, dict) for e in log.events)
    assert len(log.events) + log.unreadable_lines <= len(lines) + sum(line.count(b"\n") for line in lines)


@SETTINGS
@given(content=garbage)
def test_garbage_format_marker_is_a_clear_error(layout, content):
    layout.format_file.write_bytes(content)
    try:
        open_base(layout.root)
    except TrainerError:
        pass


@SETTINGS
@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_garbage_config_is_a_config_error(tmp_path, content):
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    try:
        load_config(path)
    except TrainerError:
        pass
