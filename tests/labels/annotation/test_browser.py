"""End to end in headless Chromium: the real page on the real nuclei image, driven by the keyboard.

Needs Debian's ``chromium`` and ``chromium-driver`` (``tools/setup_env.sh`` installs them when it can)
and ``selenium`` (requirements-dev.txt); skipped with the reason otherwise.
"""

import json
import shutil
import time

import numpy as np
import pytest

from point_sup_labels.annotation import AnnotationStore
from point_sup_labels.coco_format import load_coco_instances, validate_coco_instances
from point_sup_labels.simulate import simulate_point_annotations

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (requirements-dev.txt)"
)
if not (CHROMIUM and DRIVER):
    pytest.skip(
        "headless Chromium not found: apt-get install -y chromium chromium-driver", allow_module_level=True
    )

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

N = 3
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1000,760",
]


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _wait_ready(driver, previous=None):
    """Wait until the page shows a point other than ``previous``; return (ann_id, index) or 'finished'."""

    def shown(d):
        body = d.find_element(By.TAG_NAME, "body")
        state = body.get_attribute("data-state")
        if state == "finished":
            return "finished"
        if state != "ready":
            return False
        now = (int(body.get_attribute("data-ann")), int(body.get_attribute("data-index")))
        return now if now != previous else False

    return WebDriverWait(driver, 15, poll_frequency=0.02).until(shown)


def test_annotate_in_chromium_then_load_for_training(nuclei_boxes, perfect_label, serve, browser, tmp_path):
    # The second tile (image 2, 11 nuclei) as the input: boxes only.
    data = json.loads(nuclei_boxes["boxes"].read_text())
    data["images"] = [img for img in data["images"] if img["id"] == 2]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == 2]
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(data))
    out = tmp_path / "points.json"
    store = AnnotationStore(load_coco_instances(boxes, require_segmentation=False), out, num_points=N, seed=5)
    points = {t.ann_id: t.points for t in store.tasks}
    ids = [t.ann_id for t in store.tasks]
    flagged_id, slow = ids[5], (ids[1], 2)

    with serve(store, nuclei_boxes["images"]) as base:
        browser.get(base + "/")
        body = browser.find_element(By.TAG_NAME, "body")
        shown = _wait_ready(browser)
        answers = 0
        while shown != "finished":
            ann_id, index = shown
            label = perfect_label(ann_id, list(points[ann_id][index]))
            if ann_id == flagged_id:  # a wrong box: flagged with the mouse, mid-object
                if index == 1:
                    browser.find_element(By.ID, "btn-flag").click()
                    shown = _wait_ready(browser, shown)
                    continue
            elif (ann_id, index) == (ids[2], 1):  # a wrong answer, taken back with the keyboard
                body.send_keys("b" if label else "o")
                assert _wait_ready(browser, shown) == (ann_id, 2)
                body.send_keys("u")
                assert _wait_ready(browser, (ann_id, 2)) == shown
            elif (ann_id, index) == slow:
                time.sleep(0.6)  # a slow answer: its time must show in the file
            if answers == 2:
                browser.find_element(By.ID, "btn-object" if label else "btn-background").click()
            else:
                body.send_keys(("o", "1")[answers % 2] if label else ("b", "2")[answers % 2])
            answers += 1
            if (ann_id, index) == (ids[3], 0):  # reload mid-object: the page resumes where it was
                _wait_ready(browser, shown)
                browser.refresh()
                body = browser.find_element(By.TAG_NAME, "body")
                shown = _wait_ready(browser)
                assert shown == (ids[3], 1)
                continue
            shown = _wait_ready(browser, shown)
        assert browser.find_element(By.ID, "done").is_displayed()
        assert "objects 11/11 (1 flagged)" in browser.find_element(By.ID, "progress").text
        png = browser.get_screenshot_as_png()
        assert png.startswith(b"\x89PNG")
    store.close()

    # The saved file: the simulator's format and points, the perfect annotator's labels, timings.
    res = json.loads(out.read_text())
    validate_coco_instances(res, require_segmentation=False)
    masks = load_coco_instances(nuclei_boxes["masks"])
    sim, _ = simulate_point_annotations(masks, num_points=N, seed=5)
    sim_by_id = {a["id"]: k for k, a in enumerate(masks.annotations)}
    assert [img["id"] for img in res["images"]] == [2]
    assert [a["id"] for a in res["annotations"]] == [i for i in ids if i != flagged_id]
    assert [(a["id"], a["point_sup_flag"]) for a in res["point_sup_flagged"]] == [(flagged_id, "bad_box")]
    for ann in res["annotations"]:
        k = sim_by_id[ann["id"]]
        assert ann["point_coords"] == sim[0].coords[k].tolist()
        assert ann["point_labels"] == sim[0].labels[k].tolist()  # the wrong answer was undone
        assert len(ann["point_seconds"]) == N and all(0 < s < 10 for s in ann["point_seconds"])
    slow_seconds = next(a for a in res["annotations"] if a["id"] == slow[0])["point_seconds"][slow[1]]
    assert slow_seconds >= 0.6
    assert np.median([s for a in res["annotations"] for s in a["point_seconds"]]) < 0.6
    ops = [json.loads(line)["op"] for line in (tmp_path / "points.json.journal").read_text().splitlines()]
    assert ops.count("undo") == 1 and ops.count("flag") == 1

    # Training code loads it: registered like any P_N dataset, through the point-aware mapper.
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog

    from point_sup import add_point_sup_config, register_coco_instances_with_points
    from point_sup.data import PointSupDatasetMapper

    name = f"annotated_e2e_{id(res)}"
    register_coco_instances_with_points(name, {}, out, nuclei_boxes["images"])
    try:
        (record,) = DatasetCatalog.get(name)
        assert len(record["annotations"]) == 10
        cfg = add_point_sup_config(get_cfg())
        cfg.INPUT.POINT_SUP = True
        cfg.MODEL.MASK_ON = True
        mapped = PointSupDatasetMapper(cfg, is_train=True)(record)
        inst = mapped["instances"]
        assert len(inst) == 10 and tuple(inst.gt_point_coords.shape) == (10, N, 2)
        assert set(inst.gt_point_labels.unique().tolist()) <= {0.0, 1.0}
    finally:
        DatasetCatalog.remove(name)
