"""Self-training with points (paper §3.3.2): pseudo masks from a point-trained model.

A model trained from P_N predicts a mask for every ground-truth box of the training set (the
boxes are given as detections, so no box is missed and none is invented); the masks become the
ground truth of a second, ordinary mask-supervised training run.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.structures import Boxes, BoxMode, Instances
from pycocotools import mask as mask_util
from tqdm import tqdm

from ..data.catalog import coco_dict_from_catalog

__all__ = ["predict_pseudo_masks", "pseudo_mask_coco_dict"]

# An Instances field that follows each given box through inference, whose post-processing drops the
# boxes that are empty at the output size (detector_postprocess), so that masks return to their boxes.
_ANNOTATION_INDEX = "point_sup_annotation_index"


def _encode(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


logger = logging.getLogger(__name__)


@torch.no_grad()
def predict_pseudo_masks(model, dataset_dicts: Iterable[dict], image_format: str, resize) -> list[dict]:
    """Dataset dicts whose non-crowd annotations get a predicted mask for their box.

    Args:
        model: a Detectron2 GeneralizedRCNN with a mask head (any point_sup head), in eval mode.
        dataset_dicts: Detectron2 dataset dicts with ``annotations`` (boxes, classes; masks or
            points are not needed and are dropped from the output).
        image_format: ``cfg.INPUT.FORMAT``.
        resize: the test-time resize augmentation (``ResizeShortestEdge``) of the model's config.

    Returns:
        Copies of the dicts. Each non-crowd annotation has ``segmentation`` (compressed RLE of the
        predicted binary mask at the original image size) and no point fields; crowd annotations
        are dropped (a pseudo mask is only defined for a labelled object). A box that is empty once
        clipped to the image (P_N files keep zero-area boxes) gets an empty mask: it has no pixel to
        predict, and Detectron2's mapper drops such an object from training anyway.
    """
    from detectron2.data import transforms as T

    assert not model.training, "call model.eval() first"
    device = next(model.parameters()).device
    out = []
    num_empty = 0
    for record in tqdm(list(dataset_dicts), desc="pseudo masks", unit="img"):
        record = copy.deepcopy(record)
        anns = [a for a in record.get("annotations", []) if a.get("iscrowd", 0) == 0]
        for a in anns:
            for key in ("segmentation", "point_coords", "point_labels"):
                a.pop(key, None)
        record["annotations"] = anns
        if anns:
            image = utils.read_image(record["file_name"], format=image_format)
            h, w = image.shape[:2]
            aug_input = T.AugInput(image)
            transforms = T.AugmentationList([resize])(aug_input)
            resized = aug_input.image
            boxes = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns])
            given = Instances(resized.shape[:2])
            given.pred_boxes = Boxes(torch.as_tensor(transforms.apply_box(boxes), dtype=torch.float32))
            given.pred_classes = torch.as_tensor([a["category_id"] for a in anns], dtype=torch.int64)
            given.scores = torch.ones(len(anns))
            given.set(_ANNOTATION_INDEX, torch.arange(len(anns)))
            inputs = {
                "image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))).to(device),
                "height": h,
                "width": w,
            }
            result = model.inference([inputs], detected_instances=[given])[0]["instances"].to("cpu")
            masks = np.zeros((len(anns), h, w), dtype=np.uint8)
            masks[result.get(_ANNOTATION_INDEX).numpy()] = result.pred_masks.numpy()
            num_empty += len(anns) - len(result)
            for a, m in zip(anns, masks, strict=True):
                a["segmentation"] = _encode(m)
        out.append(record)
    if num_empty:
        logger.info(f"{num_empty} boxes are empty inside their image: written with empty pseudo masks")
    return out


def pseudo_mask_coco_dict(dataset_name: str, records: list[dict]) -> dict:
    """COCO-format dict (images, categories, annotations with RLE masks) of ``records``.

    Through :func:`point_sup.data.catalog.coco_dict_from_catalog` with the metadata of
    ``dataset_name`` (for the category ids of the original file): each image's ``file_name`` is
    written relative to the image root of ``dataset_name``, so the file is registered with that
    same root (e.g. ``datasets/coco/train2017``); images outside it keep an absolute path. Image
    ids that are not integers (Detectron2's Cityscapes loader) become 1..N.
    """
    coco = coco_dict_from_catalog(dataset_name, records)
    coco["info"]["description"] = f"point_sup pseudo masks for {dataset_name}"
    return coco
