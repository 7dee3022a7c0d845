"""The annotation server under failure: failed starts, stale requests, corrupted and torn journals,
hostile bodies, silent clients, out-of-range numbers (issue 12, item 8).

Every test runs the real server on 127.0.0.1 port 0 in a thread, talks real HTTP (``http.client``
or a raw socket) and uses real files under ``tmp_path``. The input is a small synthetic one: two
PNG images, three boxes (annotations 11 and 12 on image 1, 21 on image 2), N = 3 points each.
"""

import contextlib
import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

import pytest

from point_sup_labels.annotation import AnnotationServer, AnnotationStore, journal_path
from point_sup_labels.coco_format import CocoFormatError, load_coco_instances

ROOT = Path(__file__).resolve().parents[2]
N = 3


def _boxes(images: list[dict]) -> dict:
    return {
        "images": images,
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 8], "area": 80, "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [14, 6, 12, 12], "area": 144, "iscrowd": 0},
            {"id": 21, "image_id": 2, "category_id": 1, "bbox": [1, 1, 20, 15], "area": 300, "iscrowd": 0},
        ],
    }


@pytest.fixture
def session(tmp_path) -> dict:
    """Paths of a session to start: ``images`` (folder), ``boxes`` (COCO JSON), ``output``."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 24), (90, 140, 200)).save(images / name)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(
        json.dumps(
            _boxes(
                [
                    {"id": 1, "file_name": "a.png", "height": 24, "width": 32},
                    {"id": 2, "file_name": "b.png", "height": 24, "width": 32},
                ]
            )
        )
    )
    return {"images": images, "boxes": boxes, "output": tmp_path / "points.json", "root": tmp_path}


def _instances(session: dict):
    return load_coco_instances(session["boxes"], require_segmentation=False)


def _open(session: dict, **kw) -> AnnotationServer:
    """Open (or resume) the session and bind its server; a refused store raises from here."""
    kw.setdefault("num_points", N)
    store = AnnotationStore(_instances(session), session["output"], **kw)
    return AnnotationServer(store, session["images"], host="127.0.0.1", port=0)


@contextlib.contextmanager
def _serving(server: AnnotationServer) -> Iterator[tuple[str, int]]:
    """Serve in a thread; yield (host, port); stop and close the store afterwards."""
    # A short poll interval: shutdown() waits for it, and some tests restart the server often.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server.server_address[:2]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        server.store.close()


def _request(addr, method: str, path: str, body: dict | bytes | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(*addr, timeout=10)
    try:
        data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def _state(addr) -> dict:
    status, state = _request(addr, "GET", "/api/state")
    assert status == 200
    return state


def _answer(addr, state: dict, label: int = 1, seconds: float = 0.5, **extra) -> tuple[int, dict]:
    t = state["task"]
    body = {"ann_id": t["ann_id"], "index": t["index"], "label": label, "seconds": seconds}
    return _request(addr, "POST", "/api/answer", {**body, "version": state.get("version"), **extra})


def _raw_exchange(addr, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _ops(output: Path) -> list[str]:
    return [json.loads(line)["op"] for line in journal_path(output).read_text().splitlines()]


def _tool():
    spec = spec_from_file_location("annotate_tool_reliability", ROOT / "tools/annotate.py")
    tool = module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def _argv(session: dict, boxes: Path, port: int, num_points: int) -> list[str]:
    return [
        "--images", str(session["images"]), "--annotations", str(boxes), "--output", str(session["output"]),
        "--num-points", str(num_points), "--port", str(port),
    ]  # fmt: skip


# ---------------------------------------------------------------------- 1. failed starts


def test_failed_start_leaves_no_session_files_and_never_removes_an_earlier_one(session, caplog):
    tool = _tool()
    out, journal = session["output"], journal_path(session["output"])
    # A rejected file_name (it leads out of the image folder): refused, and nothing written.
    (session["root"] / "outside.png").write_bytes(b"x")
    bad = session["root"] / "bad.json"
    bad.write_text(
        json.dumps(
            _boxes(
                [
                    {"id": 1, "file_name": "a.png", "height": 24, "width": 32},
                    {"id": 2, "file_name": "../outside.png", "height": 24, "width": 32},
                ]
            )
        )
    )
    with caplog.at_level(logging.ERROR):
        assert tool.main(_argv(session, bad, 0, 3)) == 1
    assert "image id=2: file_name '../outside.png' must be a path relative to the image folder" in caplog.text
    assert not out.exists() and not journal.exists()

    # A port already in use: refused, and nothing written.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert tool.main(_argv(session, session["boxes"], port, 3)) == 1
        assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in caplog.text
        assert not out.exists() and not journal.exists()

        # So the next start, with other options, is a fresh session (not "started with
        # --num-points 3, not 2").
        start = AnnotationServer.open_session  # what tools/annotate.py runs
        with _serving(start(_instances(session), out, session["images"], num_points=2, port=0)) as addr:
            state = _state(addr)
            assert (state["task"]["ann_id"], state["task"]["num_points"], state["version"]) == (11, 2, 0)
            assert _answer(addr, state)[0] == 200
        assert json.loads(journal.read_text().splitlines()[0])["num_points"] == 2

        # An earlier session's files survive failed starts byte for byte (busy port, bad input,
        # other options).
        before = (out.read_bytes(), journal.read_bytes())
        assert tool.main(_argv(session, session["boxes"], port, 2)) == 1
        assert tool.main(_argv(session, bad, 0, 2)) == 1
        assert tool.main(_argv(session, session["boxes"], 0, 3)) == 1  # other --num-points
        assert (out.read_bytes(), journal.read_bytes()) == before
    with _serving(_open(session, num_points=2)) as addr:
        assert _state(addr)["progress"]["points_done"] == 1


# ---------------------------------------------------------------------- 2. stale requests


def test_concurrent_and_replayed_undos_take_back_one_answer(session):
    with _serving(_open(session)) as addr:
        sent = []
        for k in range(5):
            state = _state(addr)
            sent.append(state)
            status, _ = _answer(addr, state, label=k % 2)
            assert status == 200
        assert _state(addr)["progress"]["points_done"] == 5

        # Five undos made against the same view, at once: one takes back one answer.
        barrier = threading.Barrier(5)
        results = []

        def undo() -> None:
            barrier.wait()
            results.append(_request(addr, "POST", "/api/undo", {"version": 5}))

        threads = [threading.Thread(target=undo) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(s for s, _ in results) == [200, 409, 409, 409, 409]
        assert _state(addr)["progress"]["points_done"] == 4
        refused = [body for s, body in results if s == 409]
        expected = (
            "stale request: made against version 5, but the answers are at version 6 (changed by "
            "another tab or a repeated request); nothing was recorded"
        )
        assert all(b["error"] == expected and b["state"]["version"] == 6 for b in refused)
        state = _state(addr)
        assert (state["version"], state["progress"]["points_done"]) == (6, 4)
        # The undone answer was the fifth: its point is asked again.
        assert (state["task"]["ann_id"], state["task"]["index"]) == (
            sent[4]["task"]["ann_id"],
            sent[4]["task"]["index"],
        )

        # Replays: the same undo again, and the fifth answer's request again (its object and point
        # are the ones asked now, but it was made against version 4).
        assert _request(addr, "POST", "/api/undo", {"version": 5})[0] == 409
        status, body = _answer(addr, sent[4])
        assert status == 409 and "made against version 4" in body["error"]
        status, body = _request(addr, "POST", "/api/flag", {"ann_id": state["task"]["ann_id"], "version": 3})
        assert status == 409 and "made against version 3" in body["error"]
        # An undo must say which state it was made against.
        status, body = _request(addr, "POST", "/api/undo", {})
        assert (status, body) == (
            400,
            {"error": "'version' must be an integer, got nothing (the field is missing)"},
        )
        assert _state(addr)["progress"]["points_done"] == 4
        # The current version is accepted.
        assert _request(addr, "POST", "/api/undo", {"version": 6})[0] == 200
    assert _ops(session["output"]) == ["header", *["answer"] * 5, "undo", "undo"]
    # The version counts journal events, so it survives a restart.
    with _serving(_open(session)) as addr:
        assert _state(addr)["version"] == 7


# ---------------------------------------------------------------------- 3. journal validation


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"label": 7}, "'label' of this answer must be 0 or 1, got 7"),
        ({"label": "x"}, "'label' of this answer must be 0 or 1, got \"x\""),
        ({"label": True}, "'label' of this answer must be 0 or 1, got true"),
        ({"index": 3}, "'index' of this answer must be an integer in [0, 3), got 3"),
        ({"index": None}, "'index' of this answer must be an integer in [0, 3), got null"),
        ({"ann_id": False}, "'ann_id' of this answer must be a 64-bit integer, got false"),
        ({"seconds": 1e308}, "'seconds' of this answer must be a number in [0, 3600], got 1e+308"),
        ({"seconds": -1}, "'seconds' of this answer must be a number in [0, 3600], got -1"),
        ({"point": [1]}, "'point' of this answer must be [x, y] (2 non-negative integers), got [1]"),
        (
            {"bbox": "box"},
            "'bbox' of this answer must be [x, y, width, height] (4 finite numbers), got \"box\"",
        ),
        ({"time": "now"}, "'time' of this answer must be a finite number, got \"now\""),
        ({"op": "answr"}, '\'op\' must be "answer", "flag" or "undo", got "answr"'),
        ("drop:seconds", "'seconds' of this answer must be a number in [0, 3600], got missing"),
        ("replace:[1]", "expected a JSON object, got [1]"),
        ("replace:null", "expected a JSON object, got null"),
    ],
    ids=[
        "label-7",
        "label-str",
        "label-bool",
        "index-range",
        "index-null",
        "ann_id-bool",
        "seconds-huge",
        "seconds-negative",
        "point-short",
        "bbox-str",
        "time-str",
        "op-unknown",
        "seconds-missing",
        "array",
        "null",
    ],
)
def test_journal_replay_validates_every_line(session, edit, message):
    with _serving(_open(session)) as addr:
        for _ in range(3):
            assert _answer(addr, _state(addr))[0] == 200
    journal = journal_path(session["output"])
    lines = journal.read_text().splitlines()
    event = json.loads(lines[2])  # line 3: the second answer
    if isinstance(edit, dict):
        event.update(edit)
        lines[2] = json.dumps(event)
    elif edit.startswith("drop:"):
        del event[edit[5:]]
        lines[2] = json.dumps(event)
    else:
        lines[2] = edit[8:]
    # A torn tail too: a refused start must not cut it (nor write anything else).
    corrupted = ("\n".join(lines) + '\n{"op":"answer","ann_').encode()
    journal.write_bytes(corrupted)
    output = session["output"].read_bytes()
    with pytest.raises(CocoFormatError) as err:
        _open(session)
    assert str(err.value) == f"{journal}: line 3: {message} (corrupted journal)"
    assert journal.read_bytes() == corrupted and session["output"].read_bytes() == output


# ---------------------------------------------------------------------- 4. body size and depth


def test_oversized_and_deeply_nested_bodies_are_refused(session):
    with _serving(_open(session)) as addr:
        # Nested 5000 deep (json.loads would raise RecursionError and drop the connection).
        deep = b'{"version": 0, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
        status, body = _request(addr, "POST", "/api/undo", deep)
        assert (status, body) == (400, {"error": "malformed JSON body: nested deeper than 32 levels"})
        # The limit is exact: 32 levels pass (the object is one), 33 do not.
        ok = b'{"version": 0, "x": ' + b"[" * 31 + b"]" * 31 + b"}"
        over = b'{"version": 0, "x": ' + b"[" * 32 + b"]" * 32 + b"}"
        assert _request(addr, "POST", "/api/undo", ok)[0] == 200  # nothing to undo: still 200
        assert _request(addr, "POST", "/api/undo", over)[0] == 400

        host = f"Host: {addr[0]}:{addr[1]}\r\n".encode()
        # Declared over 64 KiB: refused before a byte of the body is read, and the connection
        # closed (the unread body must not be parsed as a next request).
        head = b"POST /api/undo HTTP/1.1\r\n" + host + b"Content-Type: application/json\r\n"
        reply = _raw_exchange(addr, head + b"Content-Length: 65537\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 413 ")
        assert b"Connection: close" in reply
        assert reply.endswith(b'{"error": "the body (65537 bytes) is over the limit of 65536 bytes"}')
        assert _raw_exchange(addr, head + b"\r\n").startswith(b"HTTP/1.1 411 ")

        # Brackets inside strings are text, not nesting.
        status, body = _request(addr, "POST", "/api/flag", {"ann_id": 11, "reason": "[" * 100, "version": 0})
        assert status == 400 and body["error"].startswith("flag reason must be one of")
        assert _state(addr)["version"] == 0  # the server still answers; nothing was recorded
    assert _ops(session["output"]) == ["header"]


# ---------------------------------------------------------------------- 5. socket timeout


def test_a_client_that_stops_sending_is_dropped_after_the_timeout(session):
    server = _open(session)
    server.request_timeout = 0.3
    with _serving(server) as addr:
        # A body announced but never sent: 408 and the connection closed, not a thread held forever.
        started = time.monotonic()
        reply = _raw_exchange(
            addr,
            b"POST /api/answer HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"ann_id"' % (addr[0].encode(), addr[1]),
        )
        elapsed = time.monotonic() - started
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert reply.endswith(b'{"error": "the request body did not arrive in time"}')
        assert 0.25 < elapsed < 3
        # A connection that sends nothing at all is closed too.
        started = time.monotonic()
        assert _raw_exchange(addr, b"") == b""
        assert time.monotonic() - started < 3
        assert _state(addr)["version"] == 0
    assert AnnotationServer.request_timeout == 30.0  # the default, for real clients
    assert _ops(session["output"]) == ["header"]


# ---------------------------------------------------------------------- 6. number ranges


def test_numbers_are_range_checked_and_bools_are_not_integers(session):
    with _serving(_open(session)) as addr:
        state = _state(addr)
        for extra, error in [
            ({"seconds": 1e308}, "seconds must be in [0, 3600], got 1e+308"),
            ({"seconds": 3600.5}, "seconds must be in [0, 3600], got 3600.5"),
            ({"seconds": -0.1}, "seconds must be in [0, 3600], got -0.1"),
            ({"seconds": True}, "'seconds' must be a number, got True"),
            ({"index": -1}, "index must be an integer in [0, 3), got -1"),
            ({"index": 3}, "index must be an integer in [0, 3), got 3"),
            ({"index": True}, "'index' must be an integer, got True"),
            ({"index": 0.0}, "'index' must be an integer, got 0.0"),
            ({"label": True}, "'label' must be an integer, got True"),
            ({"label": 2}, "label must be 0 or 1, got 2"),
            ({"ann_id": True}, "'ann_id' must be an integer, got True"),
            ({"version": True}, "'version' must be an integer, got True"),
        ]:
            status, body = _answer(addr, state, **extra)
            assert (status, body) == (400, {"error": error}), extra
        # Numbers JSON cannot hold: Infinity/NaN literals, and an exponent that overflows to inf.
        for text, error in [
            (b'{"ann_id": 11, "index": 0, "label": 1, "seconds": NaN}', "NaN is not a JSON number"),
            (b'{"ann_id": 11, "index": 0, "label": 1, "seconds": Infinity}', "Infinity is not a JSON number"),
        ]:
            assert _request(addr, "POST", "/api/answer", text) == (
                400,
                {"error": f"malformed JSON body: {error}"},
            )
        status, body = _request(
            addr, "POST", "/api/answer", b'{"ann_id": 11, "index": 0, "label": 1, "seconds": 1e400}'
        )
        assert (status, body) == (400, {"error": "seconds must be a finite number, got inf"})
        assert _state(addr)["version"] == 0
        # The bound itself is accepted.
        status, state = _answer(addr, state, seconds=3600)
        assert status == 200 and state["version"] == 1
        assert state["max_seconds"] == 3600  # the page caps what it sends to it
    # The library refuses the same (a bool index would otherwise pass as point 1).
    with AnnotationStore(_instances(session), session["output"], num_points=N) as store:
        with pytest.raises(ValueError, match=r"index must be an integer in \[0, 3\), got True"):
            store.answer(11, True, 1, 1.0)
        with pytest.raises(ValueError, match=r"seconds must be in \[0, 3600\], got 1e\+308"):
            store.answer(11, 1, 1, 1e308)
    assert _ops(session["output"]) == ["header", "answer"]
    point_seconds = json.loads(journal_path(session["output"]).read_text().splitlines()[1])["seconds"]
    assert point_seconds == 3600


# ---------------------------------------------------------------------- 7. torn last line


def test_torn_last_line_warning_names_the_lost_answer(session, caplog):
    journal = journal_path(session["output"])
    with _serving(_open(session)) as addr:
        for _ in range(4):  # annotation 11 done (3 points), annotation 12 at point index 1
            assert _answer(addr, _state(addr))[0] == 200

    def restart_with(torn: bytes) -> tuple[str, dict]:
        with open(journal, "ab") as f:  # a crash in the middle of writing the next line
            f.write(torn)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="point_sup_labels.annotation.journal"):
            server = _open(session)
        with _serving(server) as addr:
            state = _state(addr)
        (record,) = [r for r in caplog.records if "torn" in r.getMessage()]
        assert journal.read_bytes().endswith(b"\n")  # the torn bytes are gone
        prefix = f"{journal}: discarding a torn last line ({len(torn)} bytes) left by a crash: "
        assert record.getMessage().startswith(prefix)
        return record.getMessage()[len(prefix) :], state

    # Parseable enough: the line names the object and the point.
    what, state = restart_with(b'{"op":"answer","ann_id":12,"index":1,"point":[1')
    assert what == "the answer to point index 1 of annotation 12 (image 1) was lost; it is asked again"
    assert (state["task"]["ann_id"], state["task"]["index"], state["progress"]["points_done"]) == (12, 1, 4)
    # Only the object: the point is the one that was being asked.
    what, _ = restart_with(b'{"op":"answer","ann_id":12,"ind')
    assert what == "the answer to point index 1 of annotation 12 (image 1) was lost; it is asked again"
    # "ann_id":1 might have been 12: a value cut off is not trusted; the state says what came next.
    what, _ = restart_with(b'{"op":"answer","ann_id":1')
    assert what == "the answer to point index 1 of annotation 12 (image 1) was lost; it is asked again"
    # Nothing to tell: what would have come next.
    what, _ = restart_with(b'{"op":"ans')
    assert what == (
        "the answer (or flag or undo) after the last complete line was lost; the point asked next "
        "is point index 1 of annotation 12 (image 1)"
    )
    what, _ = restart_with(b'{"op":"flag","ann_id":12,"re')
    assert what == "the bad-box flag of annotation 12 (image 1) was lost; it is asked again"
    what, state = restart_with(b'{"op":"undo","ti')
    assert what == (
        "an undo was lost: the answer to point index 0 of annotation 12 (image 1) is still recorded; "
        "undo it again if needed"
    )
    assert state["progress"]["points_done"] == 4 and state["version"] == 4
    assert _ops(session["output"]) == ["header", *["answer"] * 4]
