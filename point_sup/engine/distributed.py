"""DistributedDataParallel for GPU *and* CPU (gloo) processes, with identical replicas.

Two differences from Detectron2's ``create_ddp_model``, which
:class:`~point_sup.engine.trainer.PointSupTrainer` calls instead (nothing is patched):

* Detectron2 always passes ``device_ids=[local_rank]``, which PyTorch rejects for a module on the
  CPU. Multi-process CPU training (``--num-gpus 2`` with ``MODEL.DEVICE cpu`` over gloo; how the
  distributed path is tested without GPUs) needs ``device_ids=None``. GPU models get Detectron2's.
* With ``broadcast_buffers=False`` (Detectron2's trainers) DDP broadcasts only the parameters of
  rank 0 at construction (PyTorch >= 1.13), while ``default_setup`` seeds every rank differently: a
  buffer drawn at random in ``__init__`` (Implicit PointRend's positional-encoding matrix) would
  differ per rank. Every buffer is broadcast from rank 0 once, right after wrapping, so all replicas
  start identical (docs/multi_gpu.md).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from detectron2.engine import create_ddp_model as _d2_create_ddp_model
from detectron2.utils import comm

__all__ = ["broadcast_buffers", "create_ddp_model"]


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Overwrite every buffer of ``module`` with rank ``src``'s, in place (no-op in one process).

    Collective: every rank of the default process group must call it with the same module structure.
    """
    if comm.get_world_size() == 1:
        return
    with torch.no_grad():
        for buffer in module.buffers():
            if buffer.is_contiguous():
                dist.broadcast(buffer, src=src)
            else:  # broadcast needs a dense tensor; copy the result back into the strided buffer
                dense = buffer.contiguous()
                dist.broadcast(dense, src=src)
                buffer.copy_(dense)


def create_ddp_model(model: torch.nn.Module, *, fp16_compression: bool = False, **kwargs) -> torch.nn.Module:
    """Like :func:`detectron2.engine.defaults.create_ddp_model`, but valid for CPU models, and with
    rank 0's buffers on every rank when DDP itself does not broadcast them."""
    if comm.get_world_size() == 1:
        return model
    if "device_ids" not in kwargs and next(model.parameters()).device.type == "cpu":
        kwargs["device_ids"] = None
    ddp = _d2_create_ddp_model(model, fp16_compression=fp16_compression, **kwargs)
    if not kwargs.get("broadcast_buffers", True):
        broadcast_buffers(model)
    return ddp
