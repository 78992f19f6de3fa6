"""One item trained by N ranks under torch's elastic agent, for the data-parallel tests.

    python -m helpers.dp_worker NPROC BASE DATA OUT [--micro M] [--accum A] [--stop-after K] [--strategy fsdp]

BASE holds models/base (the demo model); each rank works in BASE/rank-R, and only rank 0 (the
leader) is given the data: the followers train on the shares it posts them. Rank 0 saves the
per-step losses and the final weights to OUT, every rank its final weights to OUT.rank-R.
--stop-after K stops (checkpointed) after K steps; run again on the same BASE, with any NPROC,
it resumes from that checkpoint. --strategy fsdp: the ranks shard the model and all work in
BASE/rank-0 (each writes its shards of the checkpoints there); only rank 0 saves, the whole
weights gathered.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import socket
from pathlib import Path

import torch
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from trainer.config import CheckpointConfig, Config, DistributedConfig, TrainConfig
from trainer.train import weights_io
from trainer.train.engine import Engine
from trainer.train.follower import follow
from trainer.train.world import World


def config(micro: int, accum: int, strategy: str = "ddp") -> Config:
    return Config(train=TrainConfig(max_length=128, micro_batch_size=micro, grad_accum_steps=accum,
                                    learning_rate=1e-3, warmup_steps=0, deterministic=True),
                  checkpoint=CheckpointConfig(every_steps=1000), distributed=DistributedConfig(strategy=strategy))


def train_item(base: str, data: str, out: str, micro: int, accum: int, stop_after: int, strategy: str) -> None:
    world = World.from_environment()
    if world.distributed:
        torch.distributed.init_process_group("gloo")
    try:
        rank_base = Path(base) / f"rank-{0 if strategy == 'fsdp' else world.rank}"
        if strategy != "fsdp":
            shutil.copytree(Path(base) / "models", rank_base / "models", dirs_exist_ok=True)
        engine = Engine(rank_base, config(micro, accum, strategy), world)
        if not world.is_leader:
            follow(engine)
            if not engine.sharded:
                torch.save({name: p.detach().clone() for name, p in engine.params.items()},
                           f"{out}.rank-{world.rank}")
            return
        engine.start()
        path = Path(data)
        plan = engine.prepare("item", hashlib.sha256(path.read_bytes()).hexdigest(), path)
        losses: list[float] = []
        engine.train(plan, lambda progress: losses.append(progress.loss) or len(losses) != stop_after)
        if engine.sharded:
            params = {name: tensor for name, tensor in weights_io.full_weights(engine).items() if name in engine.params}
        else:
            params = {name: p.detach().clone() for name, p in engine.params.items()}
        engine.release_followers()
        torch.save({"losses": losses, "steps": plan.total_steps, "params": params}, out)
    finally:
        if world.distributed:
            torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("nproc", type=int)
    parser.add_argument("base")
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--micro", type=int, default=2)
    parser.add_argument("--accum", type=int, default=4)
    parser.add_argument("--stop-after", type=int, default=0)
    parser.add_argument("--strategy", default="ddp")
    args = parser.parse_args()
    if args.strategy == "fsdp":  # every rank in one base dir: copied once, before they start
        shutil.copytree(Path(args.base) / "models", Path(args.base) / "rank-0" / "models", dirs_exist_ok=True)
    launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=args.nproc, run_id="dp-test",
                          rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{free_port()}", max_restarts=0,
                          monitor_interval=0.1, start_method="spawn")
    elastic_launch(launch, train_item)(args.base, args.data, args.out, args.micro, args.accum, args.stop_after,
                                          args.strategy)


if __name__ == "__main__":
    main()
