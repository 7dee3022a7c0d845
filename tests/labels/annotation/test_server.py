"""The HTTP server: API round trips, stale requests, concurrency, path traversal, request hygiene."""

import http.client
import http.server
import json
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from point_sup_labels.annotation import AnnotationServer, AnnotationStore, is_loopback, resolve_image_paths
from point_sup_labels.coco_format import CocoFormatError, load_coco_instances, validate_coco_instances


def _store(nuclei_boxes, out, **kw):
    return AnnotationStore(load_coco_instances(nuclei_boxes["boxes"], require_segmentation=False), out, **kw)


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers, r.read()


def _post(url, body, ctype="application/json"):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": ctype}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _raw(base, path, headers=None):
    """GET with the path sent byte for byte (no client-side normalization of '..' or '%2e')."""
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.putrequest("GET", path, skip_host=bool(headers and "Host" in headers))
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


def test_page_state_answer_undo_flag(nuclei_boxes, perfect_label, serve, tmp_path):
    store = _store(nuclei_boxes, tmp_path / "p.json", num_points=2)
    with serve(store, nuclei_boxes["images"]) as base:
        status, headers, page = _get(base + "/")
        assert status == 200 and b'src="/static/app.js"' in page
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        static = Path(__file__).parents[3] / "point_sup_labels/annotation/static"
        for name in ("app.js", "style.css"):
            status, _, body = _get(f"{base}/static/{name}")
            assert status == 200 and body == (static / name).read_bytes()
        status, headers, png = _get(base + "/images/1")
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert png == (Path(nuclei_boxes["images"]) / "val_0.png").read_bytes()

        state = json.loads(_get(base + "/api/state")[2])
        task = state["task"]
        assert (task["ann_id"], task["index"], task["category"], task["num_points"]) == (1, 0, "nucleus", 2)
        assert state["progress"]["points_total"] == 74 and not state["can_undo"]
        label = perfect_label(1, task["point"])
        status, state = _post(base + "/api/answer", {"ann_id": 1, "index": 0, "label": label, "seconds": 0.8})
        assert status == 200 and state["task"]["index"] == 1 and state["can_undo"]
        assert state["task"]["answered"] == [{"point": task["point"], "label": label}]
        # The same answer again (a double key press, a second tab) is refused with the fresh state.
        status, body = _post(base + "/api/answer", {"ann_id": 1, "index": 0, "label": label, "seconds": 0.8})
        assert status == 409 and body["state"]["task"]["index"] == 1
        # An undo names the state version it was made against (nothing else identifies it).
        assert _post(base + "/api/undo", {})[0] == 400
        status, state = _post(base + "/api/undo", {"version": state["version"]})
        assert status == 200 and state["task"]["index"] == 0
        status, state = _post(base + "/api/flag", {"ann_id": 1})
        assert status == 200 and state["task"]["ann_id"] == 2 and state["progress"]["objects_flagged"] == 1

        for body, expected in (
            ({"ann_id": 2, "index": 0, "label": 3, "seconds": 1}, "label must be 0 or 1"),
            ({"ann_id": 2, "index": 0, "label": 1}, "'seconds' must be a number"),
            ({"ann_id": "2", "index": 0, "label": 1, "seconds": 1}, "'ann_id' must be an integer"),
        ):
            status, err = _post(base + "/api/answer", body)
            assert status == 400 and expected in err["error"]
        assert _post(base + "/api/answer", {"ann_id": 2}, ctype="text/plain")[0] == 415
        assert _post(base + "/api/nothing", {})[0] == 404
    store.close()


def test_concurrent_answers_leave_a_consistent_journal_and_output(nuclei_boxes, serve, tmp_path):
    out = tmp_path / "p.json"
    store = _store(nuclei_boxes, out, num_points=3)
    accepted, refused = [], []

    def annotator(worker: int) -> None:
        for _ in range(40):
            state = json.loads(_get(base + "/api/state")[2])
            if state["finished"]:
                return
            t = state["task"]
            body = {"ann_id": t["ann_id"], "index": t["index"], "label": worker % 2, "seconds": 0.1}
            status, _ = _post(base + "/api/answer", body)
            (accepted if status == 200 else refused).append((t["ann_id"], t["index"], status))
            if worker == 0 and len(accepted) % 7 == 0:
                version = json.loads(_get(base + "/api/state")[2])["version"]
                _post(base + "/api/undo", {"version": version})  # 409 if another answer came first

    with serve(store, nuclei_boxes["images"]) as base:
        threads = [threading.Thread(target=annotator, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    store.close()
    assert refused and all(s == 409 for *_, s in refused)  # the threads did collide
    # Replaying the journal reproduces the state; every object's answers are in order, none twice.
    with _store(nuclei_boxes, out, num_points=3) as again:
        done_before = store.progress()
        assert again.progress() == done_before
    events = [json.loads(line) for line in (tmp_path / "p.json.journal").read_text().splitlines()]
    assert sum(e["op"] == "answer" for e in events) == len(accepted)
    res = json.loads(out.read_text())
    validate_coco_instances(res, require_segmentation=False)  # point fields well formed
    for a in res["annotations"]:
        assert len(a["point_labels"]) == len(a["point_seconds"]) == 3


def test_path_traversal_and_unknown_images_are_refused(nuclei_boxes, serve, tmp_path):
    store = _store(nuclei_boxes, tmp_path / "p.json")
    (Path(nuclei_boxes["images"]) / "unlisted.png").write_bytes(b"not listed in the JSON")
    with serve(store, nuclei_boxes["images"]) as base:
        for path in (
            "/images/../../../../etc/passwd",
            "/images/..%2f..%2f..%2fetc%2fpasswd",
            "/images/%2e%2e/%2e%2e/etc/passwd",
            "/images/1/../../session.py",
            "/images/val_0.png",
            "/images/unlisted.png",
            "/images/3",
            "/images/-1",
            "/images/99999999999999999999999",
            "/static/../session.py",
            "/static/..%2fsession.py",
            "/static/index.html/../../server.py",
            "/static/",
            "//etc/passwd",
            "/etc/passwd",
            "/api/../session.py",
        ):
            status, body = _raw(base, path)
            assert status in (403, 404), path
            assert b"root:" not in body and b"import" not in body and b"not listed" not in body, path
        # A page of another origin (DNS rebinding) names another host: refused.
        assert _raw(base, "/api/state", {"Host": "evil.example:80"})[0] == 403
        assert _raw(base, "/api/state")[0] == 200

        # An image swapped for a symlink out of the folder after start-up is no longer served.
        img = Path(nuclei_boxes["images"]) / "val_1.png"
        saved = img.read_bytes()
        secret = tmp_path / "secret.png"
        secret.write_bytes(b"secret")
        img.unlink()
        img.symlink_to(secret)
        try:
            assert _raw(base, "/images/2")[0] == 404
        finally:
            img.unlink()
            img.write_bytes(saved)
    store.close()


def _one_image(file_name):
    return validate_coco_instances(
        {
            "images": [{"id": 7, "file_name": file_name, "height": 4, "width": 4}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 2, 2]}],
            "categories": [{"id": 1, "name": "x"}],
        },
        source="boxes.json",
        require_segmentation=False,
    )


@pytest.mark.parametrize(
    ("file_name", "message"),
    [
        ("../outside.png", "without '..'"),
        ("/etc/passwd", "relative to the image folder"),
        ("link.png", "leads outside the image folder"),
        ("missing.png", "no such file"),
        (None, "'file_name' must be a non-empty string"),
    ],
)
def test_bad_file_names_are_refused_at_start(tmp_path, file_name, message):
    root = tmp_path / "images"
    root.mkdir()
    (tmp_path / "outside.png").write_bytes(b"x")
    os.symlink(tmp_path / "outside.png", root / "link.png")
    with pytest.raises(CocoFormatError, match=rf"boxes.json: image id=7: .*{message}"):
        resolve_image_paths(_one_image(file_name), root, {7})


def test_non_browser_formats_are_converted_and_loopback_detection(tmp_path, serve):
    from PIL import Image

    root = tmp_path / "images"
    root.mkdir()
    Image.new("L", (4, 4), 200).save(root / "a.tif")
    store = AnnotationStore(_one_image("a.tif"), tmp_path / "p.json", num_points=1)
    with serve(store, root) as base:
        status, headers, body = _get(base + "/images/7")
        assert status == 200 and headers["Content-Type"] == "image/png" and body.startswith(b"\x89PNG")
    store.close()
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    assert issubclass(AnnotationServer, http.server.ThreadingHTTPServer)
