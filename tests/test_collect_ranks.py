"""Collection on several processes: rank and world size from the launcher, one writer per rank (a lock),
no question in two ranks, and a real two-process torchrun launch on the CPU feeding train-probe."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from adaptive_think.cli import main
from adaptive_think.files import LockedError
from adaptive_think.training.collect import CollectConfig, collect
from adaptive_think.training.items import Item, load_checker
from adaptive_think.training.launch import Launch, launch_env
from adaptive_think.training.shards import load_records, lock_path
from tiny import make_scripted, make_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CFG = CollectConfig(every=2, batch_size=4, max_new_tokens=24, max_answer_tokens=8, shard_questions=4)


def items(n):
    return [Item(f"q{i}", f"what is {i % 20}", str(i % 20)) for i in range(n)]


def test_rank_and_world_come_from_the_launcher():
    assert launch_env({}) == Launch(0, 1, 0, "none")
    assert launch_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Launch(3, 4, 1, "torchrun")
    assert launch_env({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2",
                       "OMPI_COMM_WORLD_LOCAL_RANK": "1"}) == Launch(1, 2, 1, "Open MPI")
    assert launch_env({"PMI_RANK": "2", "PMI_SIZE": "3"}) == Launch(2, 3, 0, "MPICH / Intel MPI")
    assert launch_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "4"}) == Launch(0, 1, 0, "none")
    # what `accelerate launch --cpu --num_processes 2` gives its one process: said, not silently taken as 2
    alone = launch_env({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    assert (alone.rank, alone.world) == (0, 1) and "started this process alone" in alone.note and "torchrun" in alone.note
    with pytest.raises(ValueError, match="rank 2 of 2"):
        launch_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        launch_env({"RANK": "0", "WORLD_SIZE": "two"})


def test_a_second_writer_of_the_same_rank_fails_at_once(tmp_path):
    tok = make_tokenizer()
    model = make_scripted("works", tok)
    # another process holds the lock (files.py alone, by path: it needs only the standard library)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import importlib.util as u, time\n"
         f"spec = u.spec_from_file_location('files', {str(ROOT / 'adaptive_think' / 'files.py')!r})\n"
         "files = u.module_from_spec(spec); spec.loader.exec_module(files)\n"
         f"with files.exclusive_lock({str(lock_path(tmp_path, 0))!r}, 'x'):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=rf"collection rank 0 in {tmp_path} is being written by another process "
                                              rf"\(pid {holder.pid} on "):
            collect(model, tok, items(8), tmp_path, load_checker(None), CFG, progress=False, log=lambda _: None)
        assert not (tmp_path / "index-r0.json").exists()
        # another rank is another writer's business
        collect(model, tok, items(8), tmp_path, load_checker(None), CFG, rank=1, world=2, progress=False,
                log=lambda _: None)
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # dies holding the lock: the kernel releases it
        holder.wait()
    assert lock_path(tmp_path, 0).exists()  # the file stays, but a lock of a dead process is no lock
    collect(model, tok, items(8), tmp_path, load_checker(None), CFG, rank=0, world=2, progress=False,
            log=lambda _: None)
    assert sorted(r["qid"] for r in load_records(tmp_path) if r["kind"] == 0) == sorted(it.id for it in items(8))


def test_runs_with_another_number_of_processes_do_not_mix(tmp_path):
    tok = make_tokenizer()
    model = make_scripted("works", tok)
    collect(model, tok, items(8), tmp_path, load_checker(None), CFG, progress=False, log=lambda _: None)
    with pytest.raises(ValueError, match=r"other settings \(\['world'\]\).*same number of processes"):
        collect(model, tok, items(8), tmp_path, load_checker(None), CFG, rank=0, world=2, progress=False)
    # an index of another run's rank 1 (copied in by hand) holds questions rank 0 already has
    index = json.loads((tmp_path / "index-r0.json").read_text())
    (tmp_path / "index-r1.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="both hold question 'q0' .8 shared"):
        load_records(tmp_path)


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu_then_train_probe(tmp_path, capsys):
    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--",
           str(ROOT / "scripts" / "collect_probe_data.py"), "--model", "bundled", "--n", "8", "--seed", "31",
           "--out", str(out), "--device", "cpu", "--batch-size", "4"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    per_rank = {d["rank"]: d for d in lines if "rank" in d}
    assert sorted(per_rank) == [0, 1] and all(d["world"] == 2 and d["questions"] == 4 for d in per_rank.values())
    whole = next(d for d in lines if "ranks" in d)
    assert whole["ranks"] == 2 and whole["questions"] == 8 and whole["health"]["full_accuracy"] == 1.0
    assert {p.name for p in out.glob("index-r*.json")} == {"index-r0.json", "index-r1.json"}
    assert {p.name for p in out.glob("shard-r*.json")} == {"shard-r0-00000.json", "shard-r1-00000.json"}
    prompts = sorted(r["qid"] for r in load_records(out) if r["kind"] == 0)
    assert prompts == sorted(f"s31-{i}" for i in range(8))  # every question exactly once
    assert main(["train-probe", "--data", str(out), "--out", str(tmp_path / "p"), "--epochs", "20", "--width", "8",
                 "--epsilon", "0.3"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["out"] == str(tmp_path / "p")
