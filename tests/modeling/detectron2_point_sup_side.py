"""The Detectron2 side of test_detectron2_point_sup_step.py, run in its own process.

``python detectron2_point_sup_side.py PROJECT_COPY CONFIG OUT`` builds the model of a PointSup
project config (Detectron2's ``projects/PointSup``, copied to PROJECT_COPY as package
``d2_point_sup``) shrunk by :data:`SHRINK`, trains it :data:`STEPS` SGD steps on :func:`batch`, and
saves its initial state dict with every step's losses and gradients to OUT. It imports neither
point_sup nor the tests' conftest: both register the project's head names.
"""

from __future__ import annotations

import sys

import torch
from detectron2.structures import Boxes, Instances

STEPS = 3
LR = 0.01
SHRINK = [
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.RESNETS.DEPTH", 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.RESNETS.NORM", "GN", "MODEL.FPN.OUT_CHANNELS", 32,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 100,
    "MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 64, "MODEL.ROI_MASK_HEAD.CONV_DIM", 32, "MODEL.ROI_MASK_HEAD.FC_DIM", 64,
    "MODEL.POINT_HEAD.NUM_CLASSES", 3, "MODEL.POINT_HEAD.FC_DIM", 32,
]  # fmt: skip


def batch() -> list[dict]:
    """Two 128 x 128 training inputs with 3 and 2 objects of 10 labelled points each (image
    coordinates; the last point of every object ignored, label -1)."""
    g = torch.Generator().manual_seed(0)
    all_boxes = torch.tensor([[10.0, 10.0, 60.0, 70.0], [50.0, 40.0, 120.0, 110.0], [5.0, 80.0, 40.0, 125.0]])
    inputs = []
    for n in (3, 2):
        boxes = all_boxes[:n]
        rel = torch.rand(n, 10, 2, generator=g)
        inst = Instances((128, 128))
        inst.gt_boxes = Boxes(boxes.clone())
        inst.gt_classes = torch.arange(n) % 3
        inst.gt_point_coords = boxes[:, None, :2] + rel * (boxes[:, None, 2:] - boxes[:, None, :2])
        labels = ((rel - 0.5).abs() < 0.25).all(dim=2).float()
        labels[:, -1] = -1.0
        inst.gt_point_labels = labels
        image = torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8, generator=g)
        inputs.append({"image": image, "instances": inst, "height": 128, "width": 128})
    return inputs


def train(model: torch.nn.Module, rename=lambda name: name) -> list[tuple[dict, dict]]:
    """:data:`STEPS` SGD steps of ``model`` on :func:`batch`, each seeded; per step the losses and
    the gradients by parameter name (``rename`` maps the model's names to the ones compared)."""
    from detectron2.utils.events import EventStorage

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    record = []
    for step in range(STEPS):
        torch.manual_seed(100 + step)  # the same proposal sampling on both sides
        with EventStorage(step):
            losses = model(batch())
        optimizer.zero_grad()
        sum(losses.values()).backward()
        grads = {rename(k): p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        record.append(({k: v.detach().clone() for k, v in losses.items()}, grads))
        optimizer.step()
    return record


def main(project_copy: str, config: str, out: str) -> None:
    sys.path.insert(0, project_copy)
    from d2_point_sup import add_point_sup_config
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.projects.point_rend import add_pointrend_config

    cfg = get_cfg()
    add_pointrend_config(cfg)
    add_point_sup_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(SHRINK)
    torch.manual_seed(0)
    model = build_model(cfg)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"state": state, "record": train(model)}, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
