"""Shared fixtures of the evaluation tests."""

import pytest
import torch
from detectron2.structures import Boxes, Instances


@pytest.fixture
def no_detections():
    """Factory: an image's model output with no detection, every field a mask model predicts
    present and empty: ``no_detections(height, width) -> Instances``."""

    def make(height: int, width: int) -> Instances:
        empty = Instances((height, width))
        empty.pred_boxes = Boxes(torch.zeros(0, 4))
        empty.scores = torch.zeros(0)
        empty.pred_classes = torch.zeros(0, dtype=torch.int64)
        empty.pred_masks = torch.zeros(0, height, width, dtype=torch.bool)
        return empty

    return make
