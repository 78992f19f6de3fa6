"""`trainctl status` with several ranks: one line for the world, one per rank, from the state
file the daemon's rank 0 writes (nothing at all for a daemon alone)."""

from __future__ import annotations

from ctl.render import _world_lines


def test_each_rank_shows_where_it_runs_and_its_memory():
    world = {"size": 2, "nodes": 1, "ranks": [
        {"rank": 0, "host": "gpu-node", "pid": 101, "rss": 3 << 30, "gpu": 70 << 30},
        {"rank": 1, "host": "gpu-node", "pid": 102}]}
    assert _world_lines(world) == [
        "world       2 ranks on 1 node",
        "  rank 0    gpu-node pid 101: 3.0 GiB resident, GPU 70.0 GiB",
        "  rank 1    gpu-node pid 102: memory not reported yet",
    ]


def test_a_sharded_world_says_so():
    world = {"size": 2, "nodes": 1, "strategy": "fsdp", "ranks": [{"rank": 0, "host": "h", "pid": 1}]}
    assert _world_lines(world)[0] == "world       2 ranks on 1 node, the model sharded (fsdp)"
    assert _world_lines({**world, "strategy": "ddp"})[0] == "world       2 ranks on 1 node"


def test_alone_or_damaged_the_world_shows_nothing_and_a_host_name_is_escaped():
    assert _world_lines(None) == [] and _world_lines({"size": 2}) == [] and _world_lines("x") == []
    lines = _world_lines({"size": 4, "nodes": 2, "ranks": [{"rank": 0, "host": "evil\x1b[2Jhost", "pid": 1}, 7]})
    assert lines[0] == "world       4 ranks on 2 nodes" and "\x1b" not in lines[1] and len(lines) == 2
