"""Multi-process launch that also works without CUDA, and CPU-safe DDP wrapping.

Detectron2 v0.6's ``launch`` asserts CUDA and initialises NCCL, so on CPU we spawn the workers
ourselves with the gloo backend. Processes started by ``torchrun`` (``RANK``/``WORLD_SIZE``/
``LOCAL_RANK`` in the environment) are initialised from the environment instead of spawned.
"""

import contextlib
import logging
import os
import socket
from datetime import timedelta
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

__all__ = ["DEFAULT_TIMEOUT", "create_ddp_model", "cpu_safe_ddp", "launch", "launched_by_torchrun"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (its rendezvous variables are set)."""
    return all(v in os.environ for v in _TORCHRUN_VARS)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup_local_group(num_workers_per_machine: int) -> None:
    """Create Detectron2's per-machine process group the way the installed version expects."""
    if hasattr(comm, "create_local_process_group"):  # detectron2 > 0.6
        comm.create_local_process_group(num_workers_per_machine)
        return
    if comm._LOCAL_PROCESS_GROUP is not None:  # v0.6 keeps it in a module global
        raise RuntimeError("detectron2's local process group already exists in this process")
    world_size, rank = dist.get_world_size(), dist.get_rank()
    if world_size % num_workers_per_machine != 0:
        raise ValueError(
            f"world size {world_size} is not a multiple of {num_workers_per_machine} workers per "
            "machine"
        )
    for i in range(world_size // num_workers_per_machine):
        ranks = list(range(i * num_workers_per_machine, (i + 1) * num_workers_per_machine))
        group = dist.new_group(ranks)  # every rank must create every group
        if i == rank // num_workers_per_machine:
            comm._LOCAL_PROCESS_GROUP = group


def _share_cpu_threads(num_workers_per_machine: int) -> None:
    """Split the cores between the workers: each one's default of all cores oversubscribes."""
    if "OMP_NUM_THREADS" in os.environ:
        return  # the user chose
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cores or 1) // num_workers_per_machine))


def _cpu_worker(
    local_rank: int,
    main_func: Callable,
    world_size: int,
    num_workers_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: Sequence,
    timeout: timedelta,
) -> None:
    rank = machine_rank * num_workers_per_machine + local_rank
    _share_cpu_threads(num_workers_per_machine)
    try:
        dist.init_process_group(
            backend="gloo",
            init_method=dist_url,
            world_size=world_size,
            rank=rank,
            timeout=timeout,
        )
    except Exception:
        logger.error(f"Process group URL: {dist_url}")
        raise
    _setup_local_group(num_workers_per_machine)
    # A barrier right after init avoids a spurious timeout in the first collective.
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def _torchrun_worker(main_func: Callable, args: Sequence, timeout: timedelta) -> None:
    use_cuda = torch.cuda.is_available()
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", init_method="env://", timeout=timeout
        )
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
    _setup_local_group(local_size)
    comm.synchronize()
    main_func(*args)


def launch(
    main_func: Callable,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` in ``num_machines * num_gpus_per_machine`` processes.

    With CUDA this is Detectron2's ``launch`` (NCCL). Without CUDA, ``num_gpus_per_machine``
    worker processes are spawned per machine with the gloo backend (use ``MODEL.DEVICE cpu``).
    Under ``torchrun`` nothing is spawned: the process group is initialised from the environment
    and the machine arguments are ignored.

    Args:
        main_func (callable): the per-process entry point.
        num_gpus_per_machine (int): processes per machine (GPUs, or CPU workers).
        num_machines (int): number of machines.
        machine_rank (int): rank of this machine.
        dist_url (str): rendezvous URL such as "tcp://127.0.0.1:50152", or "auto" (one machine).
        args (tuple): arguments of ``main_func``.
        timeout (timedelta): timeout of the collectives.
    """
    if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        _torchrun_worker(main_func, args, timeout)
        return
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        main_func(*args)
        return
    if torch.cuda.is_available():
        d2_launch(main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args)
        return
    if dist_url is None or dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url 'auto' only works on one machine; pass tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    logger.info(f"Launching {num_gpus_per_machine} CPU workers (gloo) on this machine")
    mp.spawn(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(
            main_func,
            world_size,
            num_gpus_per_machine,
            machine_rank,
            dist_url,
            tuple(args),
            timeout,
        ),
        daemon=False,
    )


def create_ddp_model(model: torch.nn.Module, *, fp16_compression: bool = False, **kwargs):
    """Detectron2's ``create_ddp_model``, but without ``device_ids`` for a CPU model.

    DDP rejects ``device_ids`` for CPU modules, which Detectron2 (v0.6 and main) always passes.
    """
    if comm.get_world_size() == 1:
        return model
    on_cuda = next(model.parameters()).is_cuda
    if "device_ids" not in kwargs and on_cuda:
        kwargs["device_ids"] = [comm.get_local_rank()]
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


@contextlib.contextmanager
def cpu_safe_ddp() -> Iterator[None]:
    """Make ``DefaultTrainer.__init__`` wrap CPU models in DDP without ``device_ids``.

    ``DefaultTrainer`` calls ``create_ddp_model`` through the module global of
    ``detectron2.engine.defaults`` in both v0.6 and main, so swapping that name for the duration
    of the constructor is the least invasive fix.
    """
    from detectron2.engine import defaults

    original = defaults.create_ddp_model
    defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        defaults.create_ddp_model = original
