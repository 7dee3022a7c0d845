"""The offline nuclei dataset: real pixels, exact masks, disjoint splits."""

import json

import numpy as np
from pycocotools.coco import COCO

from point_sup.data.nuclei import NUCLEI_SPLITS, build_nuclei_coco, load_nuclei


def test_load_nuclei():
    image, labels = load_nuclei()
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    assert labels.shape == (512, 512)
    assert len(np.unique(labels)) == 126  # background + 125 nuclei (environment notes)
    # Nuclei are brighter than background in this fluorescence image.
    assert image[labels > 0, 0].mean() > 2 * image[labels == 0, 0].mean()


def test_splits_are_disjoint_and_masks_exact(tmp_path):
    paths = build_nuclei_coco(tmp_path)
    _, labels = load_nuclei()
    covered = np.zeros((512, 512), dtype=int)
    for regions in NUCLEI_SPLITS.values():
        for r0, r1, c0, c1 in regions:
            covered[r0:r1, c0:c1] += 1
    assert covered.max() == 1
    for split in ("train", "val"):
        coco = COCO(str(paths[split]))
        assert len(coco.getImgIds()) == len(NUCLEI_SPLITS[split])
        for img in coco.loadImgs(coco.getImgIds()):
            r0, r1, c0, c1 = NUCLEI_SPLITS[split][int(img["file_name"].split("_")[1].split(".")[0])]
            tile = labels[r0:r1, c0:c1]
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            assert anns
            for ann in anns:
                mask = coco.annToMask(ann).astype(bool)
                ids = np.unique(tile[mask])
                assert len(ids) == 1 and ids[0] > 0
                assert np.array_equal(mask, tile == ids[0])
                x, y, w, h = ann["bbox"]
                ys, xs = np.nonzero(mask)
                assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
    assert json.loads(paths["train"].read_text())["categories"][0]["name"] == "nucleus"
