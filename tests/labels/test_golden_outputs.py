"""The simulator's output, byte for byte, as it was before the simulator was restructured.

The digests below were made by ``tools/prepare_point_annotations.py`` of commit 9dfc7b1 (before the
P_N half moved into ``point_sup_labels`` and the two drivers became one pipeline) on the input that
:func:`make_input` builds. Each case runs the tool as a user does; ``--workers 2`` on this 2.3 MB
file takes the sharded path (two shards of at least 1 MiB), ``--workers 1`` the whole-file path.
A change of any byte of any output is a change of the simulator's results: if it is meant, say so
in the commit and make the digests anew (``python tests/labels/test_golden_outputs.py``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_util

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "prepare_point_annotations.py"

CASES = {
    "p10_whole_file": ["--workers", "1"],
    "p10_sharded": ["--workers", "2"],
    "p3_seed7_random_noise": ["--num-points", "3", "--seed", "7", "--noise-rate", "0.1", "--workers", "2"],
    "p10_boundary_noise_versions_keep_masks_sharded": [
        "--num-versions", "2", "--noise-rate", "0.2", "--noise-mode", "boundary", "--keep-masks",
        "--workers", "2",
    ],
    "p10_boundary_noise_versions_keep_masks_whole_file": [
        "--num-versions", "2", "--noise-rate", "0.2", "--noise-mode", "boundary", "--keep-masks",
        "--workers", "1",
    ],
}  # fmt: skip

GOLDEN: dict[str, list[str]] = {  # case -> sha256 of each output, in version order
    "p10_boundary_noise_versions_keep_masks_sharded": [
        "1f994c57a5021fe805fa25d08eb9e92c1c83ef2e1e96c57eb2ca57ae64e093ea",
        "847f4d5a95cfe94f3aa0c2dde075fe737f470aa5c49e314bb6ff0bc7e429a9b8",
    ],
    "p10_boundary_noise_versions_keep_masks_whole_file": [
        "1f994c57a5021fe805fa25d08eb9e92c1c83ef2e1e96c57eb2ca57ae64e093ea",
        "847f4d5a95cfe94f3aa0c2dde075fe737f470aa5c49e314bb6ff0bc7e429a9b8",
    ],
    "p10_sharded": [
        "e82f6acdf238dc2e22913d5ee1f29bb0af58495c31ebaeeab51c742305bf19a1",
    ],
    "p10_whole_file": [
        "e82f6acdf238dc2e22913d5ee1f29bb0af58495c31ebaeeab51c742305bf19a1",
    ],
    "p3_seed7_random_noise": [
        "ac689eac49d8997db4952fd4dc46fe47a022d2b5485a23fbe3c6f76e0f1e2015",
    ],
}


def make_input(num_images: int = 150, per_image: int = 50, seed: int = 13) -> dict:
    """Polygons (multi-part, crossing the image border), compressed and uncompressed RLE (crowd),
    zero-area boxes, boxes partly outside their image, and a few extra fields."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, num_images + 1):
        h, w = (int(v) for v in rng.integers(40, 160, 2))
        images.append({"id": i, "file_name": f"{i:06d}.jpg", "height": h, "width": w})
        for _ in range(per_image):
            k = len(anns)
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2, 25)
            a = np.sort(rng.uniform(0, 2 * np.pi, 9))
            parts = [np.round(np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1), 2).ravel().tolist()]
            if k % 5 == 0:
                parts.append(np.round([cx, cy, cx + 5, cy, cx, cy + 6], 2).tolist())
            x0, y0 = max(cx - r, 0.0), max(cy - r, 0.0)
            bbox = [round(x0, 2), round(y0, 2), round(min(cx + r, w) - x0, 2), round(min(cy + r, h) - y0, 2)]
            segm: object = parts
            if k % 7 == 3:
                rle = mask_util.merge(mask_util.frPyObjects(parts, h, w))
                segm = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
            elif k % 7 == 5:
                m = mask_util.decode(mask_util.merge(mask_util.frPyObjects(parts, h, w))).ravel(order="F")
                b = np.concatenate([[0], np.flatnonzero(np.diff(m)) + 1, [m.size]])
                segm = {"size": [h, w], "counts": ([0] if m[0] else []) + np.diff(b).tolist()}
            if k % 11 == 4:
                bbox[2] = 0.0
            if k % 13 == 6:
                bbox[0] = -3.0
            anns.append(
                {
                    "id": 10 + 3 * k,
                    "image_id": i,
                    "category_id": 1 + k % 4,
                    "bbox": bbox,
                    "segmentation": segm,
                    "iscrowd": int(k % 7 == 5),
                    "area": round(float(np.pi * r * r), 2),
                    "attributes": {"occluded": bool(k % 2)},
                }
            )
    cats = [{"id": c, "name": f"class {c}", "supercategory": "thing"} for c in (1, 2, 3, 4)]
    return {"info": {"year": 2026}, "images": images, "annotations": anns, "categories": cats}


def run_case(folder: Path, case: str) -> list[str]:
    """The tool on the input under ``folder``; the sha256 of each output, in version order."""
    src = folder / "instances.json"
    if not src.exists():
        src.write_text(json.dumps(make_input()))
    out = folder / f"{case}.json"
    args = [sys.executable, str(TOOL), str(src), str(out), "--no-progress", *CASES[case]]
    done = subprocess.run(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert done.returncode == 0, done.stderr
    if "2" in CASES[case][CASES[case].index("--workers") + 1 :][:1]:
        assert "instead of in shards" not in done.stderr, done.stderr  # the sharded path was taken
    outputs = sorted(folder.glob(f"{case}_v*.json")) or [out]
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in outputs]


@pytest.mark.parametrize("case", sorted(CASES))
def test_output_is_byte_identical_to_the_golden_digests(tmp_path_factory, case):
    folder = tmp_path_factory.getbasetemp() / "golden"
    folder.mkdir(exist_ok=True)
    assert run_case(folder, case) == GOLDEN[case]


if __name__ == "__main__":  # make the digests anew
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(json.dumps({case: run_case(Path(d), case) for case in sorted(CASES)}, indent=4))
