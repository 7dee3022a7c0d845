"""Shared data for the annotation tool's tests: the real nuclei image as a boxes-only COCO input."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from point_sup_labels.annotation import AnnotationServer, AnnotationStore
from point_sup_labels.rle_labels import rle_labels


@pytest.fixture(scope="session")
def nuclei_boxes(tmp_path_factory) -> dict:
    """The nuclei val split (2 real image tiles, 37 nuclei): ``masks`` (COCO JSON with RLE masks),
    ``boxes`` (the same without segmentation: the tool's input) and ``images`` (the folder)."""
    from point_sup.data.nuclei import build_nuclei_coco

    root = tmp_path_factory.mktemp("nuclei_annotation")
    paths = build_nuclei_coco(root)
    data = json.loads(Path(paths["val"]).read_text())
    masks = {a["id"]: a["segmentation"] for a in data["annotations"]}
    for a in data["annotations"]:
        del a["segmentation"]
    boxes = root / "boxes.json"
    boxes.write_text(json.dumps(data))
    return {"masks": paths["val"], "boxes": boxes, "images": paths["image_root"], "rle": masks, "data": data}


@pytest.fixture(scope="session")
def perfect_label(nuclei_boxes: dict):
    """``label(ann_id, point)``: what a perfect annotator answers, the ground-truth mask at the point."""

    def label(ann_id: int, point: list[int]) -> int:
        return int(rle_labels(nuclei_boxes["rle"][ann_id], np.array([point]))[0])

    return label


@pytest.fixture(scope="session")
def serve():
    """``serve(store, image_root)``: a context manager running the real server (see below)."""
    return _running_server


@contextlib.contextmanager
def _running_server(store: AnnotationStore, image_root: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """The real server on an ephemeral port, in a thread; yields its base URL (no trailing slash)."""
    server = AnnotationServer(store, image_root, host=host, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url.rstrip("/")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
