"""Collect probe training data on several GPUs: each process takes every world-th question.

    accelerate launch --num_processes 4 scripts/collect_probe_data.py --model DIR --questions q.jsonl --out runs/c
    python scripts/collect_probe_data.py --model bundled --n 200 --out runs/c      # one process works too

Each process writes its own shards and index (index-r{rank}.json) in --out; `adaptive-think train-probe`
reads them all. Re-running resumes every rank where it stopped. Same flags as `adaptive-think collect`.
"""

from __future__ import annotations

import argparse
import json

from accelerate import PartialState

from adaptive_think.commands import collect as collect_cmd
from adaptive_think.loading import load_model_and_tokenizer
from adaptive_think.probe.collect import CollectConfig, collect


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    collect_cmd.add_arguments(parser)
    args = parser.parse_args()
    state = PartialState()
    items, checker = collect_cmd.items_from_args(args)
    # one GPU per process; a model too large for one GPU runs in a single process with --device-map auto
    device = str(state.device) if args.device == "auto" and not args.device_map else args.device
    model, tok = load_model_and_tokenizer(args.model, device, args.dtype, args.device_map)
    cfg = CollectConfig(layers=args.layers, every=args.every, batch_size=args.batch_size,
                        max_new_tokens=args.max_new_tokens, max_answer_tokens=args.max_answer_tokens,
                        exit_text=args.exit_text.encode().decode("unicode_escape"), shard_questions=args.shard_questions)
    summary = collect(model, tok, items, args.out, checker, cfg,
                      think_tokens=tuple(args.think_tokens) if args.think_tokens else None,
                      rank=state.process_index, world=state.num_processes, progress=state.is_local_main_process)
    print(json.dumps({"rank": state.process_index, **summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
