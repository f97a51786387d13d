"""train-probe's peak memory (RSS of its process) under memory budgets, and against another checkout's code.

Each run is `adaptive-think train-probe` in a child process; its peak resident set (ru_maxrss from wait4) is
read when it exits. The floor is a child that only imports train-probe's code and takes one optimizer step
(Python, torch): what no budget can remove. `--base DIR` also runs the same training from another checkout (e.g. `git worktree add --detach
/tmp/base main`), for the before / after comparison; every probe is compared with the first budget's: chosen
layer and kinds, every rung's thresholds, the largest weight difference.

`--replicate R` trains on a copy of the collection R times over (question ids and hashes renamed, shards
hard-linked where the filesystem allows): the same questions R times, standing in for a collection R times the
size (a memory measurement only).

    python benchmarks/train_memory.py --data /tmp/st-collect --memory 8 --budgets 4 0.05 1000 --base /tmp/base \\
        --out benchmarks/results/train_memory_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_env import ROOT, versions  # noqa: E402

CLI = "import sys; from adaptive_think.cli import main; sys.exit(main())"
# the floor: train-probe's imports and one AdamW step (its first step loads ~150 MB of torch machinery)
FLOOR = ("import torch, adaptive_think.training.train; h = torch.nn.Linear(8, 1); h(torch.ones(2, 8)).sum().backward(); "
         "torch.optim.AdamW(h.parameters()).step()")


def child(code_root: Path, args: list[str]) -> dict:
    """Run `python -c CLI args` with code_root's package; {peak_rss_mb, wall_s}; raises on failure."""
    env = dict(os.environ, PYTHONPATH=str(code_root), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CLI if args else FLOOR, *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=code_root)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{args} failed ({proc.returncode}):\n{out[-3000:]}")
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "wall_s": round(time.perf_counter() - t0, 1),
            "log_tail": out.strip().splitlines()[-4:-1]}


def replicate(folder: Path, times: int, dest: Path) -> Path:
    """A collection holding `folder`'s questions `times` times, under new ids and hashes (rank 0 only)."""
    index = json.loads((folder / "index-r0.json").read_text())
    shards, done = [], []
    for k in range(times):
        for name in index["shards"]:
            new = f"{name.replace('shard-r0-', f'shard-r0-{k:03d}')}"
            src = folder / f"{name}.safetensors"
            try:
                os.link(src, dest / f"{new}.safetensors")
            except OSError:
                shutil.copy(src, dest / f"{new}.safetensors")
            recs = json.loads((folder / f"{name}.json").read_text())
            for r in recs:
                r["qid"] = f"{r['qid']}x{k}"
                if r.get("qhash"):
                    r["qhash"] = f"{r['qhash']}x{k}"
            (dest / f"{new}.json").write_text(json.dumps(recs))
            shards.append(new)
        done += [f"{q}x{k}" for q in index["done"]]
    (dest / "index-r0.json").write_text(json.dumps(dict(index, shards=shards, done=done)))
    return dest


def probe_summary(folder: Path) -> dict:
    cfg = json.loads((folder / "probe.json").read_text())
    chosen = cfg["provenance"]["chosen"]
    return {"layer": chosen["layer"], "ready_kind": chosen["ready_kind"], "skip_kind": chosen["skip_kind"],
            "ladder": {r["name"]: {"thresholds": r["thresholds"], "by_decoding": r.get("thresholds_by_decoding")}
                       for r in cfg["ladder"]},
            "hidden_state_peak_mb": round(cfg["provenance"].get("hidden_state_peak_bytes", 0) / 2**20, 1) or None}


def max_weight_diff(a: Path, b: Path) -> dict:
    """{weight name: the largest |difference|} of two probes (inf where one lacks a weight)."""
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "probe.safetensors")), load_file(str(b / "probe.safetensors"))
    return {k: float((wa[k].double() - wb[k].double()).abs().max()) if k in wb else float("inf") for k in sorted(wa)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, nargs="+", help="collection folder(s) to train on")
    p.add_argument("--budgets", type=float, nargs="+", default=[4.0, 0.05, 1000.0], help="--max-memory GB values")
    p.add_argument("--base", default=None, help="another checkout's root (its train-probe has no --max-memory)")
    p.add_argument("--memory", type=int, default=8, help="train-probe --memory K (0: memoryless heads)")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--replicate", type=int, default=1, help="train on the collection this many times over")
    p.add_argument("--out", default=None, help="JSON file to write")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="train_memory_") as tmp:
        tmp = Path(tmp)
        data = [Path(d).resolve() for d in args.data]
        if args.replicate > 1:
            data = [replicate(d, args.replicate, Path(tempfile.mkdtemp(dir=tmp))) for d in data]
        common = ["train-probe", "--data", *map(str, data), "--memory", str(args.memory), "--epochs", str(args.epochs)]
        runs = {"floor (imports, one AdamW step)": child(ROOT, [])}
        outs = {}
        for gb in args.budgets:
            name = f"this checkout, --max-memory {gb:g}"
            outs[name] = tmp / f"probe-{gb:g}"
            runs[name] = child(ROOT, [*common, "--out", str(outs[name]), "--max-memory", str(gb)])
            print(name, runs[name], flush=True)
        if args.base:
            name = f"base checkout {args.base}"
            outs[name] = tmp / "probe-base"
            runs[name] = child(Path(args.base).resolve(), [*common, "--out", str(outs[name])])
            print(name, runs[name], flush=True)
        ref = next(iter(outs))
        for name, folder in outs.items():
            runs[name]["probe"] = probe_summary(folder)
            runs[name]["same_choice_and_thresholds_as_first"] = (
                {k: v for k, v in runs[name]["probe"].items() if k != "hidden_state_peak_mb"}
                == {k: v for k, v in probe_summary(outs[ref]).items() if k != "hidden_state_peak_mb"})
            runs[name]["max_weight_diff_vs_first"] = max_weight_diff(outs[ref], folder)
    result = {"data": [str(d) for d in args.data], "replicate": args.replicate, "memory": args.memory,
              "epochs": args.epochs, "runs": runs, "versions": versions(), "cpu_count": os.cpu_count()}
    print(f"{'run':48s} {'peak RSS MB':>12s} {'wall s':>8s}  same as first  max |dw|")
    for name, r in runs.items():
        print(f"{name:48s} {r['peak_rss_mb']:12.1f} {r['wall_s']:8.1f}  "
              f"{str(r.get('same_choice_and_thresholds_as_first', '')):13s}  "
              f"{max(r.get('max_weight_diff_vs_first', {'': ''}).values())}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: {"peak_rss_mb": v["peak_rss_mb"]} for k, v in runs.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
