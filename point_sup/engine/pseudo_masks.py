"""Self-training with points (paper §3.3.2): pseudo masks from a point-trained model.

A model trained from P_N predicts a mask for every ground-truth box of the training set (the boxes
are given as detections, :mod:`point_sup.engine.given_boxes`, so no box is missed and none is
invented); the masks become the ground truth of a second, ordinary mask-supervised training run.

Images are read by a Detectron2 test data loader (``num_workers`` processes read ahead of the model),
each process of a distributed run takes its contiguous share of the images (Detectron2's
``InferenceSampler``), the model gets up to ``batch_size`` images of the same *padded* size
(:func:`padded_image_size`) per call, and the masks are gathered to rank 0 in the dataset's order.
Batching never changes a mask on CPU (why a batch holds one padded size, and what is not measured on
GPUs: docs/implementation.md, *Engine: pseudo masks*).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from detectron2.data import build_detection_test_loader
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, ImageList, Instances
from detectron2.utils import comm
from pycocotools import mask as mask_util
from tqdm import tqdm

from ..data.catalog import coco_dict_from_catalog
from .given_boxes import inference_with_given_boxes

__all__ = ["PseudoMaskMapper", "padded_image_size", "predict_pseudo_masks", "pseudo_mask_coco_dict"]

# An Instances field that follows each given box through inference, whose post-processing drops the
# boxes that are empty at the output size (detector_postprocess), so that masks return to their boxes.
_ANNOTATION_INDEX = "point_sup_annotation_index"

logger = logging.getLogger(__name__)


def _encode(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _labelled(record: dict) -> list[dict]:
    return [a for a in record.get("annotations", []) if a.get("iscrowd", 0) == 0]


class PseudoMaskMapper:
    """Data-loader mapper: ``(index, dataset dict)`` to one model input with its given boxes.

    Returns ``{"index", "height", "width", "num_boxes"}`` and, for an image with at least one
    non-crowd box, ``"image"`` (uint8 (C, H', W') tensor, resized by ``resize``, in
    ``image_format``) and ``"instances"`` (``Instances`` of size (H', W'): ``pred_boxes`` XYXY in
    resized pixels, ``pred_classes``, ``scores`` = 1, and the annotation index of each box). An
    image without such a box is not read.
    """

    def __init__(self, image_format: str, resize: T.Augmentation):
        self.image_format = image_format
        self.resize = resize

    def __call__(self, item: tuple[int, dict]) -> dict:
        index, record = item
        anns = _labelled(record)
        out = {"index": index, "height": record["height"], "width": record["width"], "num_boxes": len(anns)}
        if not anns:
            return out
        image = utils.read_image(record["file_name"], format=self.image_format)
        out["height"], out["width"] = image.shape[:2]
        aug_input = T.AugInput(image)
        transforms = T.AugmentationList([self.resize])(aug_input)
        resized = aug_input.image
        boxes = np.array([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns])
        given = Instances(resized.shape[:2])
        given.pred_boxes = Boxes(torch.as_tensor(transforms.apply_box(boxes), dtype=torch.float32))
        given.pred_classes = torch.as_tensor([a["category_id"] for a in anns], dtype=torch.int64)
        given.scores = torch.ones(len(anns))
        given.set(_ANNOTATION_INDEX, torch.arange(len(anns)))
        out["image"] = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        out["instances"] = given
        return out


def padded_image_size(model: torch.nn.Module, image_size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) to which ``model`` pads a lone input image of ``image_size`` (H', W').

    Asked of Detectron2's own ``ImageList.from_tensors`` with the backbone's ``size_divisibility``
    and ``padding_constraints`` (as ``preprocess_image`` of GeneralizedRCNN and of the dense
    detectors pads), on an empty tensor. A model without a backbone gets ``image_size`` itself.
    """
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return tuple(image_size)
    probe = ImageList.from_tensors(
        [torch.empty((0, *image_size))],
        getattr(backbone, "size_divisibility", 0),
        padding_constraints=getattr(backbone, "padding_constraints", None),
    )
    return tuple(int(s) for s in probe.tensor.shape[-2:])


def _same_size_batches(
    items: Iterable[dict], batch_size: int, key: Callable[[dict], tuple[int, int]]
) -> Iterator[list[dict]]:
    """Batches of at most ``batch_size`` items of equal ``key``, in arrival order per key.

    A group is emitted when it is full; while more than ``4 * batch_size`` items wait in partial
    groups (many sizes), the group holding the oldest waiting item is emitted as it is, so that the
    memory held stays bounded. What is left is emitted at the end.
    """
    groups: dict[tuple[int, int], list[dict]] = {}
    waiting = 0
    for item in items:
        group = groups.setdefault(key(item), [])
        group.append(item)
        waiting += 1
        if len(group) == batch_size:
            waiting -= len(group)
            yield groups.pop(key(item))
        elif waiting > 4 * batch_size:
            oldest = min(groups, key=lambda k: groups[k][0]["index"])
            waiting -= len(groups[oldest])
            yield groups.pop(oldest)
    for k in sorted(groups, key=lambda k: groups[k][0]["index"]):
        yield groups[k]


def _predict_batch(model: torch.nn.Module, batch: list[dict], device: torch.device) -> tuple[dict, int]:
    """RLEs of the masks of each image of ``batch`` by its index, and the number of boxes that
    inference dropped as empty at the output size (their masks stay empty)."""
    inputs = [{"image": x["image"].to(device), "height": x["height"], "width": x["width"]} for x in batch]
    results = inference_with_given_boxes(model, inputs, [x["instances"] for x in batch])
    out, dropped = {}, 0
    for x, result in zip(batch, results, strict=True):
        result = result["instances"].to("cpu")
        masks = np.zeros((x["num_boxes"], x["height"], x["width"]), dtype=np.uint8)
        masks[result.get(_ANNOTATION_INDEX).numpy()] = result.pred_masks.numpy()
        out[x["index"]] = [_encode(m) for m in masks]
        dropped += x["num_boxes"] - len(result)
    return out, dropped


@torch.no_grad()
def predict_pseudo_masks(
    model: torch.nn.Module,
    dataset_dicts: Iterable[dict],
    image_format: str,
    resize: T.Augmentation,
    *,
    batch_size: int = 1,
    num_workers: int = 0,
) -> list[dict]:
    """Dataset dicts whose non-crowd annotations get a predicted mask for their box.

    In a distributed run (call it in every process, each with its model), each process predicts its
    contiguous share of ``dataset_dicts`` and rank 0 returns the whole result; the other ranks
    return ``[]``. The result does not depend on ``batch_size``, ``num_workers`` or the number of
    processes (see the module docstring).

    Args:
        model: a Detectron2 GeneralizedRCNN with a mask head (any point_sup head) or
            point_sup's CondInst, in eval mode, on its device.
        dataset_dicts: Detectron2 dataset dicts with ``annotations`` (boxes, classes; masks or
            points are not needed and are dropped from the output); the same list in every process.
        image_format: ``cfg.INPUT.FORMAT``.
        resize: the test-time resize augmentation (``ResizeShortestEdge``) of the model's config.
        batch_size: images per model call (of one padded size each).
        num_workers: data-loader processes reading and resizing images ahead of the model (0: in
            this process, between model calls).

    Returns:
        Copies of the dicts, in their order. Each non-crowd annotation has ``segmentation``
        (compressed RLE of the predicted binary mask at the original image size) and no point
        fields; crowd annotations are dropped (a pseudo mask is only defined for a labelled
        object). A box that is empty once clipped to the image (P_N files keep zero-area boxes)
        gets an empty mask: it has no pixel to predict, and Detectron2's mapper drops such an
        object from training anyway.
    """
    assert not model.training, "call model.eval() first"
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    dataset_dicts = list(dataset_dicts)
    if not dataset_dicts:
        return []
    device = next(model.parameters()).device
    loader = build_detection_test_loader(
        list(enumerate(dataset_dicts)), mapper=PseudoMaskMapper(image_format, resize), num_workers=num_workers
    )
    rles: dict[int, list[dict]] = {}
    num_empty = 0
    sizes: dict[tuple[int, int], tuple[int, int]] = {}

    def padded(item: dict) -> tuple[int, int]:
        size = tuple(item["image"].shape[-2:])
        if size not in sizes:
            sizes[size] = padded_image_size(model, size)
        return sizes[size]

    def images() -> Iterator[dict]:
        progress = tqdm(
            total=len(loader), desc="pseudo masks", unit="img", disable=not comm.is_main_process()
        )
        with progress:
            for (item,) in loader:
                progress.update()
                if "image" in item:
                    yield item
                else:
                    rles[item["index"]] = []

    for batch in _same_size_batches(images(), batch_size, padded):
        batch_rles, dropped = _predict_batch(model, batch, device)
        rles.update(batch_rles)
        num_empty += dropped

    # Each process holds only the RLEs of its share; the records themselves are in every process.
    shards = comm.gather((rles, num_empty), dst=0)
    if not comm.is_main_process():
        return []
    rles = {index: r for shard, _ in shards for index, r in shard.items()}
    num_empty = sum(n for _, n in shards)
    if len(shards) > 1:
        logger.info(f"gathered the pseudo masks of {len(rles)} images from {len(shards)} processes")
    assert len(rles) == len(dataset_dicts), f"{len(rles)} of {len(dataset_dicts)} images predicted"
    out = []
    for index, record in enumerate(dataset_dicts):
        record = copy.deepcopy(record)
        anns = _labelled(record)
        for a, rle in zip(anns, rles[index], strict=True):
            for key in ("point_coords", "point_labels"):
                a.pop(key, None)
            a["segmentation"] = rle
        record["annotations"] = anns
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
    ids that are not integers (Detectron2's Cityscapes loader) become 1..N. No creation date: the
    same records give the same bytes.
    """
    coco = coco_dict_from_catalog(dataset_name, records)
    coco["info"].pop("date_created", None)
    coco["info"]["description"] = f"point_sup pseudo masks for {dataset_name}"
    return coco
