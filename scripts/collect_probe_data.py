"""Collect probe training data on several processes (GPUs, or CPU cores): each takes every world-th question.

    torchrun --nproc_per_node 4 scripts/collect_probe_data.py --model DIR --questions q.jsonl --out runs/c
    accelerate launch --num_processes 4 scripts/collect_probe_data.py --model DIR ...      # runs torchrun
    torchrun --standalone --nproc_per_node 2 scripts/collect_probe_data.py --model bundled --n 60 --out runs/c --device cpu
    python scripts/collect_probe_data.py --model bundled --n 200 --out runs/c             # one process works too
    torchrun --nproc_per_node 4 scripts/collect_probe_data.py --model DIR --engine vllm ...  # one vLLM engine a rank

The rank and world size come from the launcher's environment (training/launch.py: torchrun / accelerate's
RANK, WORLD_SIZE, LOCAL_RANK, or MPI's); each process uses the GPU of its local rank and writes its own
shards and index (index-r{rank}.json) in --out, holding a lock so that a second writer of the same rank
fails at once. On a CPU machine, `accelerate launch --cpu` starts one process unless given an MPI
hostfile: use torchrun (or `accelerate launch --multi_gpu --num_processes N`, which runs torchrun).
Under torchrun the ranks meet at the end over gloo, and rank 0 checks that every question was collected
exactly once and prints the health of the whole collection. Re-running resumes every rank where it
stopped (with the same number of processes). Same flags as `adaptive-think collect`.

With --engine vllm every rank starts its own vLLM engine (data parallelism), on its own GPUs (local rank x
--tensor-parallel-size onwards) or, on a CPU machine, its own slice of the cores; the engine does not see the
launcher's variables, so each is a world of one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from adaptive_think.commands import collect as collect_cmd
from adaptive_think.loading import load_model_and_tokenizer
from adaptive_think.training.health import format_summary, summarise
from adaptive_think.training.launch import launch_env, process_device, rank_engine_env
from adaptive_think.training.shards import load_records


def whole_collection(out: str, items, world: int) -> dict:
    """Rank 0, after every rank finished: each question exactly once, and the health of all of them."""
    records = load_records(out)  # raises when two ranks hold the same question
    got = {r["qid"] for r in records if r["kind"] == 0}
    missing = [it.id for it in items if it.id not in got]
    if missing:
        raise ValueError(f"{len(missing)} question(s) are in no rank's shards (e.g. {missing[:3]}); re-run to resume.")
    health = summarise(records)
    print(f"collect, all {world} ranks: {format_summary(health)}", flush=True)
    return {"ranks": world, "questions": len(got), "health": health}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    collect_cmd.add_arguments(parser)
    args = parser.parse_args()
    env = launch_env()
    if env.note:
        print(f"note: {env.note}", file=sys.stderr, flush=True)
    items, checker = collect_cmd.items_from_args(args)
    collect_cmd.fill_max_new_tokens(args, collect_cmd.COLLECT_DEFAULTS["max_new_tokens"])
    device = process_device(env, args.device, args.device_map)
    cfg = collect_cmd.config_from_args(args)
    if collect_cmd.token_layers_from_args(args) == "auto":
        raise ValueError("--token-layers auto runs its layer pass in `adaptive-think collect`; here give the layer "
                         "it chose (OUT/layer-pass/choice.json), e.g. --token-layers 12.")
    vllm_kwargs = collect_cmd.vllm_kwargs_from_args(args)
    engine_env = None
    if vllm_kwargs is not None:
        tp = int(vllm_kwargs.get("tensor_parallel_size", 1))
        on_gpu = torch.cuda.is_available()
        engine_env = rank_engine_env(env, tp, on_gpu, gpu_count=torch.cuda.device_count() if on_gpu else 0)
        if on_gpu and args.device == "auto" and not args.device_map:
            device = f"cuda:{env.local_rank * tp}"  # the hf twin sits on the first GPU of this rank's engine
    model, tok = load_model_and_tokenizer(args.model, device, args.dtype, args.device_map)
    collect_fn = collect_cmd.make_collect_fn(args, model, tok, checker, cfg, vllm_kwargs, engine_env,
                                             rank=env.rank, world=env.world, progress=env.local_rank == 0)
    summary = collect_fn(items, args.out, cfg)
    print(json.dumps({"rank": env.rank, "world": env.world, "launcher": env.launcher, **summary}), flush=True)
    if env.world > 1 and "MASTER_ADDR" in os.environ:
        # The ranks meet once, at the end (joining the group is the barrier), so a long wait for the slowest rank
        # is normal; joining late also keeps the group out of the way of a vLLM engine's own.
        if dist.is_initialized():
            raise ValueError("torch.distributed was set up in this process by something else (a vLLM engine running "
                             "in-process: leave VLLM_ENABLE_V1_MULTIPROCESSING on), so the ranks cannot meet.")
        dist.init_process_group("gloo", rank=env.rank, world_size=env.world, timeout=timedelta(hours=24))
        try:
            dist.barrier()
            if env.rank == 0:
                print(json.dumps(whole_collection(args.out, items, env.world)), flush=True)
        finally:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (ValueError, FileNotFoundError) as err:  # bad input or unusable data: the message, not a traceback
        print(f"collect_probe_data.py (rank {launch_env().rank}): error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
