"""The processes of a run: their environment (torchrun's variables), their device, the process group's lifetime,
and the collectives the loop uses (the differentiable all-gather of MMD / SW, rank 0's value on every rank)."""
import os
from contextlib import contextmanager

import torch
import torch.distributed as dist

from .settings import SETTINGS


def log(msg, rank=0):
    """Prints msg on rank 0 (every process of a run would print it otherwise)."""
    if rank == 0:
        print(msg, flush=True)


def dist_env():
    """(distributed, rank, world size, local rank) of this process, from the variables torchrun sets."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1, int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def pick_device(name="auto", local_rank=0):
    """A device setting (auto, cpu, cuda, cuda:N, or a torch.device) -> the torch.device, checked to exist here."""
    name = SETTINGS["device"].check(str(name) if isinstance(name, torch.device) else name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU")
        count = torch.cuda.device_count()
        if device.index is None:
            device = torch.device("cuda", local_rank % count)
        elif device.index >= count:
            raise ValueError(f"device {name!r} asked for, but this machine has {count} CUDA GPU(s) (cuda:0 to "
                             f"cuda:{count - 1})")
        torch.cuda.set_device(device)
    return device


@contextmanager
def process_group(distributed, device):
    """The process group of a torchrun launch for the block: created (nccl on CUDA, gloo on the CPU) and destroyed
    at its end, unless the caller set one up, which is used and left open."""
    created = distributed and not dist.is_initialized()
    if created:
        # torch.distributed.nn binds `group=group.WORLD` as default arguments when it is first imported, and DDP
        # imports it (through torch._dynamo): imported after the group exists, it would pin the group for the
        # life of the process, so that destroy_process_group could not join the group's gloo worker threads.
        # One of those threads then frees a finished collective (holding Python objects) during interpreter
        # shutdown and the process aborts ("terminate called without an active exception") after a good run.
        import torch.distributed.nn as _  # noqa: F401  (binds no local `torch`)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        if created and dist.is_initialized():     # a group the caller set up stays theirs
            dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums each copy's gradient over ranks (all_reduce, which gloo has
    unlike reduce_scatter) and returns this rank's slice. Every rank computes the same distance of the gathered
    batch; with DDP's averaging the parameters then get the gradient of the global-batch distance."""

    @staticmethod
    def forward(ctx, x):
        world = dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x):
    """x (n, ...) of every rank, concatenated in rank order, differentiably (see _GatherWithGrad)."""
    return _GatherWithGrad.apply(x)


def from_rank0(value, distributed):
    """Rank 0's value (picklable) on every rank."""
    if distributed:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        value = box[0]
    return value


def ranks_agree(model):
    """Whether every rank holds exactly the same parameters (DDP keeps them in lockstep; this checks it)."""
    flat = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
    parts = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, flat)
    return all(torch.equal(parts[0], q) for q in parts[1:])
