"""The annotation tool's local web server (standard library only: ``http.server``).

Routes:

``GET /``, ``GET /static/app.js``, ``GET /static/style.css``
    The page (plain HTML/CSS/JS shipped in ``point_sup_labels/annotation/static``; nothing else under that
    folder, or anywhere else on disk, is reachable).
``GET /images/<image id>``
    The image of that id in the input JSON, read from ``--images``. The URL carries only the integer
    id: file names never come from the request. Paths were resolved (symlinks included) at start-up
    and must lie inside the image folder; they are checked again when served.
``GET /api/state``
    The current object and point, and the progress (:meth:`AnnotationStore.snapshot`).
``POST /api/answer`` ``{"ann_id", "index", "label", "seconds", "version"}``,
``POST /api/flag`` ``{"ann_id", "version"}``, ``POST /api/undo`` ``{"version"}``
    Record an action and return the new state. ``version`` is the state's ``version`` the action
    was made against (required for undo, which names nothing else; checked when given for answers
    and flags, which name their object and point, and always sent by the page). ``409`` with
    ``{"error", "state"}`` if the action is stale: another version, or not the point currently
    asked (second tab, double key press, a replayed request). ``400`` if malformed (wrong JSON
    type, a bool for an integer, an index outside ``[0, N)``, seconds outside
    ``[0, MAX_SECONDS_PER_ANSWER]``, a body nested deeper than ``_MAX_DEPTH``), ``411`` without a
    ``Content-Length``, ``413`` over ``_MAX_BODY`` bytes, ``408`` if the body does not arrive
    within :attr:`AnnotationServer.request_timeout` seconds.

Requests are served by threads; the store serializes them under its lock. Every connection has a
timeout (:attr:`AnnotationServer.request_timeout`), so a client that stops sending holds no thread
for long. POSTs must be ``application/json`` (which a page of another site cannot send without a
CORS preflight, which this server never grants), and on a loopback address the ``Host`` header
must name the server (so a DNS-rebinding site cannot reach it either).

A session is best started with :meth:`AnnotationServer.open_session`, which validates the input
and binds the socket before it creates any file: a start that fails leaves nothing behind.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..coco_format import CocoFormatError, CocoInstances
from ..json_values import is_integer, is_number
from .events import FLAG_BAD_BOX
from .session import AnnotationStore, ConflictError
from .tasks import plan_tasks

__all__ = ["AnnotationServer", "is_loopback", "resolve_image_paths"]

logger = logging.getLogger(__name__)

_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
_IMAGE_ROUTE = re.compile(r"/images/([0-9]{1,19})")
# Formats every browser decodes; anything else is converted to PNG before serving.
_BROWSER_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
                  ".webp": "image/webp", ".bmp": "image/bmp"}  # fmt: skip
_MAX_BODY = 64 * 1024  # bytes; the API's bodies are under 200
_MAX_DEPTH = 32  # nesting of JSON arrays/objects; the API's bodies have 1 (json.loads recurses)
_CSP = "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_image_paths(
    instances: CocoInstances, image_root: str | os.PathLike, image_ids: set[int]
) -> dict[int, Path]:
    """Real paths of the images ``image_ids``, each checked to be a file inside ``image_root``.

    Raises:
        CocoFormatError: naming the image whose ``file_name`` is missing, absolute, escapes the
            folder (``..`` or a symlink pointing outside) or does not exist.
    """
    root = Path(image_root).resolve(strict=True)
    paths: dict[int, Path] = {}
    for iid in sorted(image_ids):
        name = instances.images[iid].get("file_name")

        def fail(msg: str, iid: int = iid) -> CocoFormatError:
            return CocoFormatError(msg, source=instances.source, image_id=iid)

        if not isinstance(name, str) or not name:
            raise fail(f"image 'file_name' must be a non-empty string, got {name!r}")
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise fail(f"file_name {name!r} must be a path relative to the image folder, without '..'")
        real = (root / rel).resolve()
        if not real.is_relative_to(root):
            raise fail(f"file_name {name!r} leads outside the image folder {root} (symlink)")
        if not real.is_file():
            raise fail(f"file_name {name!r}: no such file under {root}")
        paths[iid] = real
    return paths


class AnnotationServer(ThreadingHTTPServer):
    """The HTTP server of one annotation session (``serve_forever`` in a thread, or blocking)."""

    daemon_threads = True
    # Seconds a connection may stay silent (request line, headers, body, keep-alive) before it is
    # dropped; without it a client announcing a body it never sends holds a thread forever. Set
    # on the class or an instance before serving (tests use a fraction of a second).
    request_timeout: float = 30.0

    def __init__(
        self, store: AnnotationStore, image_root: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000
    ) -> None:
        self._prepare_and_bind(store.instances, {t.image_id for t in store.tasks}, image_root, host, port)
        self.store = store

    @classmethod
    def open_session(
        cls,
        instances: CocoInstances,
        output: str | os.PathLike,
        image_root: str | os.PathLike,
        *,
        num_points: int = 10,
        seed: int = 0,
        shard: tuple[int, int] = (0, 1),
        host: str = "127.0.0.1",
        port: int = 8000,
    ) -> AnnotationServer:
        """Start (or resume) the session writing ``output``, ready for ``serve_forever``.

        In this order: the images are resolved and checked, the socket is bound, and only then is
        the :class:`AnnotationStore` opened, which creates ``output`` and its journal if they do
        not exist. So a rejected ``file_name`` or a port in use leaves no file behind, and a later
        start with other options is not refused as a resume of a session that never ran. If the
        store refuses (another process, other settings, a corrupted journal) the socket is closed;
        files of an earlier session are never removed. The caller closes ``server.store``.

        Raises:
            CocoFormatError: an image that may not be served (see :func:`resolve_image_paths`), or
                a corrupted journal.
            OSError: the address cannot be bound (e.g. the port is in use).
            ValueError, FileExistsError, OutputInUseError: as :class:`AnnotationStore`.
        """
        tasks = plan_tasks(instances, num_points, seed, shard)
        server = cls.__new__(cls)
        server._prepare_and_bind(instances, {t.image_id for t in tasks}, image_root, host, port)
        try:
            server.store = AnnotationStore(instances, output, num_points=num_points, seed=seed, shard=shard)
        except BaseException:
            server.server_close()
            raise
        return server

    def _prepare_and_bind(
        self,
        instances: CocoInstances,
        image_ids: set[int],
        image_root: str | os.PathLike,
        host: str,
        port: int,
    ) -> None:
        # Everything that may fail on bad input happens here, before any session file exists.
        self.image_root = Path(image_root).resolve(strict=True)
        self.image_paths = resolve_image_paths(instances, image_root, image_ids)
        self.static_files = {route: _read_static(name) for route, (name, _) in _STATIC.items()}
        self.loopback = is_loopback(host)
        self._png_cache: dict[int, bytes] = {}
        self._png_lock = threading.Lock()
        try:
            super().__init__((host, port), _Handler)  # binds and listens; closes the socket if that fails
        except OSError as e:
            raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror or e}") from e

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def allowed_hosts(self) -> set[str]:
        port = self.server_address[1]
        host = self.server_address[0]
        return {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]", host)}

    def image_bytes(self, image_id: int) -> tuple[bytes, str] | None:
        """The image's bytes and content type, or None if it may not be served."""
        path = self.image_paths.get(image_id)
        if path is None:
            return None
        real = path.resolve()
        if not real.is_relative_to(self.image_root) or not real.is_file():  # changed since start-up
            logger.warning("image %s no longer resolves inside %s; refused", image_id, self.image_root)
            return None
        ctype = _BROWSER_TYPES.get(real.suffix.lower())
        if ctype is not None:
            return real.read_bytes(), ctype
        with self._png_lock:
            if image_id not in self._png_cache:
                self._png_cache[image_id] = _to_png(real)
            return self._png_cache[image_id], "image/png"


def _read_static(name: str) -> bytes:
    return resources.files("point_sup_labels.annotation").joinpath("static", name).read_bytes()


def _to_png(path: Path) -> bytes:
    import io

    from PIL import Image

    with Image.open(path) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="PNG")
        return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    server: AnnotationServer
    server_version = "point_sup-annotate"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        # StreamRequestHandler.setup applies self.timeout to the socket; a read past it raises
        # TimeoutError, on which handle_one_request drops the connection.
        self.timeout = self.server.request_timeout
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    # ---------------------------------------------------------------- helpers

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", _CSP)
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", {"Cache-Control": "no-store"})

    def _error(self, status: HTTPStatus, message: str, *, close: bool = False) -> None:
        if close:
            # The body was not read (or not all of it): what is left must not be taken for the
            # next request on this keep-alive connection.
            self.close_connection = True
        extra = {"Cache-Control": "no-store", **({"Connection": "close"} if close else {})}
        self._send(status, json.dumps({"error": message}).encode(), "application/json", extra)

    def _host_ok(self) -> bool:
        if not self.server.loopback:
            return True  # reachable by other names on purpose (--host); nothing to compare against
        return self.headers.get("Host", "") in self.server.allowed_hosts()

    # ---------------------------------------------------------------- GET

    def do_GET(self) -> None:
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
        path = urlsplit(self.path).path
        if path in _STATIC:
            ctype = _STATIC[path][1]
            return self._send(
                HTTPStatus.OK, self.server.static_files[path], ctype, {"Cache-Control": "no-cache"}
            )
        if path == "/favicon.ico":  # asked by every browser; there is none
            return self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        if path == "/api/state":
            return self._json(HTTPStatus.OK, self.server.store.snapshot())
        m = _IMAGE_ROUTE.fullmatch(path)
        if m:
            found = self.server.image_bytes(int(m.group(1)))
            if found is None:
                return self._error(HTTPStatus.NOT_FOUND, "no such image in the input JSON")
            body, ctype = found
            return self._send(HTTPStatus.OK, body, ctype, {"Cache-Control": "private, max-age=3600"})
        return self._error(HTTPStatus.NOT_FOUND, "not found")

    # ---------------------------------------------------------------- POST

    def do_POST(self) -> None:
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return self._error(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "POST bodies must be application/json", close=True
            )
        declared = self.headers.get("Content-Length")
        if declared is None:
            return self._error(HTTPStatus.LENGTH_REQUIRED, "a Content-Length is required", close=True)
        if not re.fullmatch(r"[0-9]{1,12}", declared.strip()):
            return self._error(HTTPStatus.BAD_REQUEST, f"bad Content-Length {declared!r}", close=True)
        length = int(declared)
        if length > _MAX_BODY:
            return self._error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the body ({length} bytes) is over the limit of {_MAX_BODY} bytes",
                close=True,
            )
        try:
            raw = self.rfile.read(length)
        except TimeoutError:
            timeout = self.server.request_timeout
            logger.warning(
                "%s: no request body within %g s; connection dropped", self.address_string(), timeout
            )
            return self._error(
                HTTPStatus.REQUEST_TIMEOUT, "the request body did not arrive in time", close=True
            )
        if len(raw) < length:  # the client closed its side early
            return self._error(
                HTTPStatus.BAD_REQUEST, "the body is shorter than its Content-Length", close=True
            )
        try:
            body = _parse_body(raw)
        except ValueError as e:
            return self._error(HTTPStatus.BAD_REQUEST, f"malformed JSON body: {e}")
        store = self.server.store
        path = urlsplit(self.path).path
        try:
            if path == "/api/answer":
                store.answer(
                    _int(body, "ann_id"),
                    _int(body, "index"),
                    _int(body, "label"),
                    _number(body, "seconds"),
                    version=_optional_int(body, "version"),
                )
            elif path == "/api/flag":
                store.flag(
                    _int(body, "ann_id"),
                    body.get("reason", FLAG_BAD_BOX),
                    version=_optional_int(body, "version"),
                )
            elif path == "/api/undo":
                # An undo names nothing but the state it was made against: without it, five
                # replays of one undo would take back five answers.
                store.undo(version=_int(body, "version"))
            else:
                return self._error(HTTPStatus.NOT_FOUND, "not found")
        except ConflictError as e:
            return self._json(HTTPStatus.CONFLICT, {"error": str(e), "state": store.snapshot()})
        except ValueError as e:
            return self._error(HTTPStatus.BAD_REQUEST, str(e))
        except OSError as e:  # the disk refused the journal write: the answer was not recorded
            logger.error("could not record %s: %s", path, e)
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"could not save: {e}")
        return self._json(HTTPStatus.OK, store.snapshot())


def _parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object in ``raw``; ``ValueError`` for anything else, nesting over ``_MAX_DEPTH``
    included (checked before parsing: ``json.loads`` would recurse into a RecursionError)."""
    depth = _nesting_depth(raw, _MAX_DEPTH)
    if depth > _MAX_DEPTH:
        raise ValueError(f"nested deeper than {_MAX_DEPTH} levels")
    body = json.loads(raw or b"{}", parse_constant=_reject_constant)
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


def _nesting_depth(raw: bytes, stop: int) -> int:
    """The deepest nesting of arrays/objects in ``raw`` (JSON text), or ``stop + 1`` once past ``stop``.

    Brackets inside strings do not count. Malformed text is measured as well as it goes; the
    parser rejects it afterwards.
    """
    depth = deepest = 0
    in_string = escaped = False
    for b in raw:
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:  # backslash
                escaped = True
            elif b == 0x22:  # closing quote
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > stop:
                return stop + 1
            deepest = max(deepest, depth)
        elif b in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _optional_int(body: dict[str, Any], key: str) -> int | None:
    return None if body.get(key) is None else _int(body, key)


def _int(body: dict[str, Any], key: str) -> int:
    v = body.get(key)
    if not is_integer(v):  # JSON true/false are no integers
        raise ValueError(f"'{key}' must be an integer, got {_shown(body, key)}")
    return v


def _number(body: dict[str, Any], key: str) -> float:
    v = body.get(key)
    if not is_number(v):
        raise ValueError(f"'{key}' must be a number, got {_shown(body, key)}")
    return float(v)


def _shown(body: dict[str, Any], key: str) -> str:
    return repr(body[key]) if key in body else "nothing (the field is missing)"
