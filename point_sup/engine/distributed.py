"""DistributedDataParallel for GPU *and* CPU (gloo) processes.

Detectron2's ``create_ddp_model`` always passes ``device_ids=[local_rank]``, which PyTorch rejects
for a module on the CPU. Multi-process CPU training (``--num-gpus 2`` with ``MODEL.DEVICE cpu``
over gloo; useful for testing the distributed code path without GPUs) needs ``device_ids=None``.
GPU models are wrapped exactly as Detectron2 does. :class:`~point_sup.engine.trainer.PointSupTrainer`
calls this one instead of Detectron2's (nothing is patched).
"""

from __future__ import annotations

import torch
from detectron2.engine import create_ddp_model as _d2_create_ddp_model
from detectron2.utils import comm

__all__ = ["create_ddp_model"]


def create_ddp_model(model: torch.nn.Module, *, fp16_compression: bool = False, **kwargs) -> torch.nn.Module:
    """Like :func:`detectron2.engine.defaults.create_ddp_model`, but valid for CPU models too."""
    if comm.get_world_size() > 1 and "device_ids" not in kwargs:
        device = next(model.parameters()).device
        if device.type == "cpu":
            kwargs["device_ids"] = None
    return _d2_create_ddp_model(model, fp16_compression=fp16_compression, **kwargs)
