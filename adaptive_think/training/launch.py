"""Which process am I? Rank, world size and device of a collection launched on several processes.

Launchers say it in the environment: torchrun and `accelerate launch` (multi-GPU, or `--multi_gpu` on a
CPU machine, which runs torchrun) set RANK / WORLD_SIZE / LOCAL_RANK; MPI launchers (`mpirun`, and
`accelerate launch --cpu` with an MPI hostfile) set their own. A plain `python` run is rank 0 of 1.
Slurm's variables are not read (a batch script's SLURM_NTASKS does not mean this process is one of
them): launch with torchrun or srun + torchrun.

    env = launch_env()       # Launch(rank=1, world=2, local_rank=1, launcher='torchrun')
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch

# (rank, world size, local rank, launcher): the first family whose rank and size are both set wins
_FAMILIES = (
    ("RANK", "WORLD_SIZE", "LOCAL_RANK", "torchrun"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "Open MPI"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPICH / Intel MPI"),
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK", "MVAPICH"),
)


@dataclass(frozen=True)
class Launch:
    """This process's place among the launched ones."""

    rank: int
    world: int
    local_rank: int
    launcher: str  # "torchrun" | "Open MPI" | ... | "none" (a single process)
    note: str = ""  # what the user should know about how this process was launched


def _int(name: str, env) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"Environment variable {name}={env[name]!r} is not an integer; the launcher set it wrong.") from None


def launch_env(env=None) -> Launch:
    """Rank, world size and local rank from the launcher's environment variables (rank 0 of 1 without one)."""
    env = os.environ if env is None else env
    for rank_var, size_var, local_var, launcher in _FAMILIES:
        if rank_var in env and size_var in env:
            rank, world = _int(rank_var, env), _int(size_var, env)
            local = _int(local_var, env) if local_var in env else _int("LOCAL_RANK", env) if "LOCAL_RANK" in env else 0
            if world < 1 or not 0 <= rank < world or local < 0:
                raise ValueError(f"{launcher} environment says rank {rank} of {world} (local rank {local}); "
                                 "need 0 <= rank < world size.")
            return Launch(rank, world, local, launcher)
    if str(env.get("ACCELERATE_USE_CPU", "")).lower() in ("1", "true", "yes") and "MASTER_ADDR" in env:
        # `accelerate launch --cpu --num_processes N` (N > 1) without an MPI hostfile starts one process
        return Launch(0, 1, 0, "none", note=(
            "accelerate launch --cpu started this process alone (several CPU processes need an MPI hostfile); it "
            "collects every question. For several processes on CPU: torchrun --nproc_per_node N scripts/"
            "collect_probe_data.py ... (or accelerate launch --multi_gpu --num_processes N, which runs torchrun)."))
    return Launch(0, 1, 0, "none")


def process_device(launch: Launch, device: str, device_map: str | None) -> str:
    """The device this process loads its model on: `auto` picks this process's own GPU (by local rank)."""
    if device_map and launch.world > 1:
        raise ValueError(f"--device-map {device_map} spreads one model over every GPU, but {launch.world} processes "
                         "were launched; run a single process for a model that needs several GPUs.")
    if device != "auto" or device_map:
        return device
    if not torch.cuda.is_available():
        return "cpu"
    count = torch.cuda.device_count()
    if launch.local_rank >= count:
        raise ValueError(f"local rank {launch.local_rank} has no GPU of its own ({count} visible): launch at most "
                         f"{count} processes per machine, or pass --device cpu.")
    return f"cuda:{launch.local_rank}"


# torchrun's own variables: a per-rank vLLM engine must not read them (it is a world of one, not rank r of N)
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                  "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
                  "TORCHELASTIC_USE_AGENT_STORE")


def rank_engine_env(launch: Launch, tensor_parallel: int, on_gpu: bool, env=None, cpus=None,
                    gpu_count: int | None = None) -> dict[str, str | None]:
    """The environment a data-parallel rank's own vLLM engine starts in (name -> value, None = unset).

    The launcher's variables are hidden, and the rank gets its own share of the machine: GPUs
    local_rank * tp .. + tp (CUDA_VISIBLE_DEVICES), or on a CPU machine an equal slice of this process's cores
    for vLLM's OpenMP threads (VLLM_CPU_OMP_THREADS_BIND, one list per tensor-parallel worker) unless set."""
    env = os.environ if env is None else env
    out: dict[str, str | None] = {name: None for name in _LAUNCHER_VARS if name in env}
    if launch.world == 1:
        return out
    local_world = int(env.get("LOCAL_WORLD_SIZE", launch.world))
    if on_gpu:
        visible = (env["CUDA_VISIBLE_DEVICES"].split(",") if env.get("CUDA_VISIBLE_DEVICES")
                   else [str(i) for i in range(gpu_count or 0)])
        first = launch.local_rank * tensor_parallel
        if first + tensor_parallel > len(visible):
            raise ValueError(f"local rank {launch.local_rank} needs GPUs {first}..{first + tensor_parallel - 1} for "
                             f"its engine (tensor parallel {tensor_parallel}), but {len(visible)} are visible: launch "
                             f"at most {len(visible) // tensor_parallel} processes per machine.")
        out["CUDA_VISIBLE_DEVICES"] = ",".join(visible[first:first + tensor_parallel])
        return out
    if env.get("VLLM_CPU_OMP_THREADS_BIND", "auto") != "auto":
        return out  # the user bound the threads themselves
    cores = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    per_rank = len(cores) // local_world
    if per_rank < tensor_parallel:
        raise ValueError(f"{local_world} processes x tensor parallel {tensor_parallel} engines need at least "
                         f"{local_world * tensor_parallel} CPU cores, and this process may use {len(cores)}: launch "
                         "fewer processes, or set VLLM_CPU_OMP_THREADS_BIND yourself.")
    mine = cores[launch.local_rank * per_rank:(launch.local_rank + 1) * per_rank]
    share = len(mine) // tensor_parallel
    out["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(",".join(map(str, mine[i * share:(i + 1) * share]))
                                             for i in range(tensor_parallel))
    return out


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@contextmanager
def patched_env(changes: dict[str, str | None]):
    """Set (value) or unset (None) environment variables for the duration of a `with` block."""
    saved = {name: os.environ.get(name) for name in changes}
    try:
        for name, value in changes.items():
            _set_env(name, value)
        yield
    finally:
        for name, value in saved.items():
            _set_env(name, value)
