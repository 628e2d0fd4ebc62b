"""`sortbox web`: the review page, the dashboard and a small API, as a separate process.

The daemon keeps no network at all; this process reads what the daemon writes (the journal,
the library, the models) and changes the library only the way a person in a file manager
would, through review.py, under the library's lock.

Security, since a page that moves files is an attack surface:
- it binds loopback unless told otherwise, and any other address needs `web.password`;
- every request needs the token (made once, kept mode 0600 in the library's state folder,
  printed in the address `sortbox web` shows), exchanged for an HttpOnly SameSite=Strict
  cookie on the first visit, or `Authorization: Bearer <token>` for scripts;
- the Host header must name this machine (localhost, a loopback address) or a configured name,
  against DNS rebinding;
- every change (POST) needs the CSRF token the page carries, and a same-origin Origin and
  Sec-Fetch-Site where the browser sends them;
- no path is ever built from request data: pictures are named by their content hash and
  looked up in a listing of the library, classes and versions by name in their lists.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import structlog
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image
from sortbox.daemon.answers.review import (
    Decisions,
    FilingError,
    Picture,
    audit_queue,
    backlog_age,
    class_folders,
    confirm_picture,
    file_picture,
    listing,
    review_queue,
)
from sortbox.daemon.layout import REVIEW_FOLDER, STATE_FOLDER, replacing
from sortbox.daemon.settings import Settings
from sortbox.daemon.sorting.journal import Event, Rejected, Review, Sorted, parse_lines
from sortbox.daemon.sorting.manifest import (
    ModelError,
    current_version,
    point_current_to,
    published_versions,
    read_manifest,
    verify_model_file,
)
from sortbox.daemon.sorting.preprocess import BadImage, decode_rgb
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

log = structlog.get_logger(__name__)

COOKIE = "sortbox_session"
PAGE_SIZE = 48
THUMB_SIZES = (256, 512)
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
SAFE_METHODS = {"GET", "HEAD"}


def token_file(library: Path) -> Path:
    return library / STATE_FOLDER / "web-token"


def load_or_make_token(library: Path) -> str:
    """The page's token: made once, readable only by the service's user."""
    path = token_file(library)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip()
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(token + "\n")
    return token


class NotLoopback(Exception):
    """Listening beyond this machine without a password."""


def check_listen(settings: Settings, listen: str) -> None:
    if listen not in LOOPBACK_NAMES and not listen.startswith("127.") and not settings.web.password:
        raise NotLoopback(
            f"sortbox web --listen {listen} would let any machine that reaches it move your "
            "pictures: set [web] password in config.toml first (and put TLS in front with a "
            "reverse proxy for anything beyond a home network)"
        )


# -- what the pages read ------------------------------------------------------------------------


class JournalReader:
    """The journal's events, read once and then only what was appended since."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._inode: int | None = None
        self._offset = 0

    def events(self) -> list[Event]:
        with self._lock:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                self._events, self._inode, self._offset = [], None, 0
                return []
            if st.st_ino != self._inode or st.st_size < self._offset:
                self._events, self._inode, self._offset = [], st.st_ino, 0
            if st.st_size > self._offset:
                with self.path.open("rb") as journal:
                    journal.seek(self._offset)
                    data = journal.read(st.st_size - self._offset)
                complete = data.rfind(b"\n") + 1  # a line being written is read next time
                self._events += parse_lines(data[:complete].splitlines(), str(self.path))
                self._offset += complete
            return list(self._events)


@dataclass
class Training:
    """The one `sortbox train` the page may have started, and what it printed."""

    process: subprocess.Popen[bytes] | None = None
    output: Path | None = None
    started: float = 0.0

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Web:
    def __init__(self, settings: Settings, config: Path | None) -> None:
        self.settings = settings
        self.config = config
        self.token = load_or_make_token(settings.library)
        self.csrf = hmac.new(self.token.encode(), b"csrf", hashlib.sha256).hexdigest()
        self.journal = JournalReader(settings.journal)
        self.training = Training()
        self.templates = Environment(
            loader=PackageLoader("sortbox.daemon.answers", "templates"),
            autoescape=select_autoescape(["html"]),
        )
        self.thumbs = settings.library / STATE_FOLDER / "thumbs"

    # -- requests that pass the checks ---------------------------------------------------------

    def classes(self) -> list[str]:
        version = current_version(self.settings.models_dir)
        manifest_classes: list[str] = []
        if version is not None:
            with contextlib.suppress(ModelError):
                manifest_classes = read_manifest(self.settings.models_dir / version).classes
        return class_folders(self.settings.library, manifest_classes)

    def render(self, template: str, **values: Any) -> HTMLResponse:
        page = self.templates.get_template(template).render(
            csrf=self.csrf, classes=self.classes(), **values
        )
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    def review_page(self, request: Request) -> Response:
        decisions = Decisions.of(self.journal.events())
        queue = review_queue(self.settings.library, decisions, seed=_today())
        return self._queue_page(request, queue, "review.html", REVIEW_FOLDER, title="Review")

    def audit_page(self, request: Request) -> Response:
        folder = request.query_params.get("class", "")
        classes = self.classes()
        if folder not in classes:
            return self.render("audit_pick.html", title="Audit")
        decisions = Decisions.of(self.journal.events())
        queue = audit_queue(self.settings.library, folder, decisions)
        return self._queue_page(request, queue, "review.html", folder, title=f"Audit: {folder}")

    def _queue_page(
        self, request: Request, queue: list[Picture], template: str, folder: str, title: str
    ) -> Response:
        page = _page_number(request)
        shown = queue[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
        return self.render(
            template,
            title=title,
            folder=folder,
            cards=self._collapsed(shown),
            total=len(queue),
            page=page,
            pages=max(1, -(-len(queue) // PAGE_SIZE)),
            audit=folder != REVIEW_FOLDER,
            backlog_hours=backlog_age(queue),
        )

    def _collapsed(self, shown: list[Picture]) -> list[dict[str, Any]]:
        """Cards for a page: near-duplicates (pictures whose thumbnails' difference hashes are
        a few bits apart) collapse into one card that files them all."""
        cards: list[dict[str, Any]] = []
        seen: list[tuple[int, dict[str, Any]]] = []
        for picture in shown:
            fingerprint = self.fingerprint(picture)
            for other, card in seen:
                if fingerprint is not None and bin(other ^ fingerprint).count("1") <= 4:
                    card["members"].append(picture.hash12)
                    break
            else:
                card = {"picture": picture, "members": [picture.hash12]}
                cards.append(card)
                if fingerprint is not None:
                    seen.append((fingerprint, card))
        return cards

    def fingerprint(self, picture: Picture) -> int | None:
        """The difference hash of the picture's thumbnail, if it has been made: the page never
        waits for decoding (a 10,000-picture queue opens at once); the browser asks for the
        thumbnails right after, and the next look collapses what they show alike."""
        thumb = self.thumbs / f"{picture.hash12}-{THUMB_SIZES[0]}.webp"
        if not thumb.is_file():
            return None
        with Image.open(thumb) as image:
            small = image.convert("L").resize((9, 8))
        pixels = list(small.getdata())
        bits = [
            pixels[row * 9 + col] > pixels[row * 9 + col + 1]
            for row in range(8)
            for col in range(8)
        ]
        return sum(bit << n for n, bit in enumerate(bits))

    def thumbnail(self, folder: str, hash12: str, size: int) -> Path | None:
        """The cached WebP thumbnail of the picture with this hash in this folder, made on
        first request (draft decode; HEIC and RAW as the daemon reads them). None: no such
        picture, or not one Pillow can show."""
        cached = self.thumbs / f"{hash12}-{size}.webp"
        if cached.is_file():
            return cached
        name = listing(self.settings.library, folder).get(hash12)
        if name is None:
            return None
        try:
            data = _read_no_follow(self.settings.library / folder / name)
            image = decode_rgb(data, size, self.settings.max_pixels, name)
        except (OSError, BadImage):
            return None
        image.thumbnail((size, size))
        self.thumbs.mkdir(parents=True, exist_ok=True)
        with replacing(cached) as temporary:
            image.save(temporary, "WEBP", quality=80)
        return cached

    def file(self, body: dict[str, Any]) -> Response:
        hashes = body.get("pictures")
        if not isinstance(hashes, list) or not all(_is_hash12(h) for h in hashes):
            return JSONResponse({"error": "name pictures by their 12-hex content hash"}, 400)
        source, target = str(body.get("from", "")), str(body.get("to", ""))
        allowed = self.classes()
        filed, refused = [], []
        for hash12 in hashes:
            try:
                event = file_picture(
                    self.settings.library, self.settings.journal, hash12, source, target, allowed
                )
                filed.append({"picture": hash12, "dest": event.dest})
            except FilingError as exc:
                refused.append({"picture": hash12, "error": str(exc), "status": exc.status})
        status = 200 if filed or not refused else refused[0]["status"]
        return JSONResponse({"filed": filed, "refused": refused}, status)

    def confirm(self, body: dict[str, Any]) -> Response:
        hashes = body.get("pictures")
        if not isinstance(hashes, list) or not all(_is_hash12(h) for h in hashes):
            return JSONResponse({"error": "name pictures by their 12-hex content hash"}, 400)
        folder, allowed = str(body.get("folder", "")), self.classes()
        confirmed, refused = [], []
        for hash12 in hashes:
            try:
                confirm_picture(
                    self.settings.library, self.settings.journal, hash12, folder, allowed
                )
                confirmed.append(hash12)
            except FilingError as exc:
                refused.append({"picture": hash12, "error": str(exc), "status": exc.status})
        status = 200 if confirmed or not refused else refused[0]["status"]
        return JSONResponse({"confirmed": confirmed, "refused": refused}, status)

    def dashboard(self) -> Response:
        return self.render("dashboard.html", title="sortbox", **self.dashboard_figures())

    def dashboard_figures(self) -> dict[str, Any]:
        from sortbox.daemon.answers.status import gather_status

        events = self.journal.events()
        now = datetime.now(UTC)
        hours = [
            now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=h)
            for h in range(23, -1, -1)
        ]
        per_hour: dict[str, Counter[str]] = {h.isoformat(): Counter() for h in hours}
        for event in events:
            if isinstance(event, Sorted | Review | Rejected) and event.ts >= hours[0]:
                hour = event.ts.replace(minute=0, second=0, microsecond=0).isoformat()
                if hour in per_hour:
                    per_hour[hour][event.event] += 1
        status = gather_status(self.settings)
        latency = _latency([e for e in events if isinstance(e, Sorted | Review)], now)
        decisions = Decisions.of(events)
        backlog = review_queue(self.settings.library, decisions, seed=_today())
        return {
            "status": status,
            "per_hour": [(hour[11:16], counts) for hour, counts in per_hour.items()],
            "most_per_hour": max([sum(c.values()) for c in per_hour.values()] + [1]),
            "backlog": len(backlog),
            "backlog_hours": backlog_age(backlog),
            "corrections": _corrections(events, self.settings.library),
            "latency": latency,
            "promise": _promise(status["precision"]["overall"]["promised"]),
            "versions": self.versions(),
            "training": self.training_state(),
        }

    def versions(self) -> list[dict[str, Any]]:
        current = current_version(self.settings.models_dir)
        rows = []
        for version, manifest in published_versions(self.settings.models_dir):
            folder = self.settings.models_dir / version
            report = folder / "report.md"
            rows.append(
                {
                    "version": version,
                    "current": version == current,
                    "created": manifest.created,
                    "kind": manifest.kind,
                    "classes": len(manifest.classes),
                    "accuracy": _number(manifest.metrics.get("accuracy")),
                    "report": report.read_text(encoding="utf-8") if report.is_file() else None,
                    "confusion": (folder / "confusion.png").is_file(),
                }
            )
        return sorted(rows, key=lambda row: row["created"], reverse=True)

    def rollback(self, version: str) -> Response:
        versions = [v for v, _ in published_versions(self.settings.models_dir)]
        if version not in versions:
            return JSONResponse({"error": f"no published version {version!r}"}, 404)
        try:
            verify_model_file(
                self.settings.models_dir / version,
                read_manifest(self.settings.models_dir / version),
            )
        except ModelError as exc:
            return JSONResponse({"error": str(exc)}, 409)
        point_current_to(self.settings.models_dir, version)
        log.info("rolled_back", version=version, by="web")
        return JSONResponse({"current": version})

    def start_training(self) -> Response:
        if self.training.running():
            return JSONResponse({"error": "a training run started here is still running"}, 409)
        output = self.settings.library / STATE_FOLDER / "web-train.log"
        command = [sys.executable, "-m", "sortbox.daemon.cli", "train"]
        if self.config is not None:
            command += ["--config", str(self.config)]
        with output.open("wb") as out:
            self.training = Training(
                subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT),
                output,
                time.time(),
            )
        return JSONResponse(self.training_state())

    def training_state(self) -> dict[str, Any]:
        training = self.training
        tail = ""
        if training.output is not None and training.output.exists():
            tail = training.output.read_bytes()[-4000:].decode("utf-8", "replace")
        process = training.process
        return {
            "running": training.running(),
            "exit_status": None if process is None else process.poll(),
            "output": tail,
        }

    def explain(self, data: bytes, name: str) -> Response:
        from sortbox.daemon.answers.explain import explain_one
        from sortbox.daemon.sorting.classify import load_model
        from sortbox.daemon.sorting.index import DoneIndex

        safe_name = os.path.basename(name) or "upload"
        classifier = load_model(self.settings)
        index = DoneIndex.from_events(self.journal.events())
        with tempfile.TemporaryDirectory(prefix="sortbox-explain-") as folder:
            path = Path(folder) / f"upload{Path(safe_name).suffix[:10]}"
            path.write_bytes(data)
            answer = explain_one(path, classifier, index, self.settings)
        answer["file"] = safe_name
        return JSONResponse(answer)

    def metrics(self) -> Response:
        events = self.journal.events()
        counts: Counter[tuple[str, str]] = Counter()
        for event in events:
            if isinstance(event, Sorted | Review | Rejected) and event.dest:
                counts[(event.event, event.dest.split("/", 1)[0])] += 1
        lines = [
            "# HELP sortbox_journal_files_total Files decided, from the journal.",
            "# TYPE sortbox_journal_files_total counter",
            *(
                f'sortbox_journal_files_total{{event="{e}",folder="{_escape(f)}"}} {n}'
                for (e, f), n in sorted(counts.items())
            ),
            "# HELP sortbox_review_backlog Pictures waiting in needs_review.",
            "# TYPE sortbox_review_backlog gauge",
            f"sortbox_review_backlog {len(listing(self.settings.library, REVIEW_FOLDER))}",
        ]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


# -- the checks every request passes --------------------------------------------------------


def allowed_hosts(settings: Settings, listen: str) -> set[str]:
    hosts = set(LOOPBACK_NAMES) | set(settings.web.allowed_hosts)
    if listen not in ("0.0.0.0", "::"):
        hosts.add(listen)
    return hosts


def host_name(host: str) -> str:
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def refusal(request: Request, web: Web, hosts: set[str]) -> Response | None:
    """The response that refuses this request, or None when it may go on."""
    host = host_name(request.headers.get("host", ""))
    if host not in hosts:
        log.warning("web_refused", why="unexpected Host header", host=host, path=request.url.path)
        return PlainTextResponse("unexpected Host header", 400)
    if not _authenticated(request, web):
        log.warning("web_refused", why="no token", path=request.url.path)
        if web.settings.web.password and request.method in SAFE_METHODS:
            return RedirectResponse("/login", 303)
        return PlainTextResponse(
            "open the address `sortbox web` printed: it carries the token this page needs", 401
        )
    if request.method not in SAFE_METHODS:
        sent = request.headers.get("x-csrf-token", "")
        if not hmac.compare_digest(sent, web.csrf):
            log.warning("web_refused", why="no CSRF token", path=request.url.path)
            return PlainTextResponse("missing or wrong CSRF token", 403)
        if not _same_origin(request):
            log.warning("web_refused", why="cross-site request", path=request.url.path)
            return PlainTextResponse("cross-site request refused", 403)
    return None


def _authenticated(request: Request, web: Web) -> bool:
    cookie = request.cookies.get(COOKIE, "")
    bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    return any(hmac.compare_digest(given, web.token) for given in (cookie, bearer) if given)


def _same_origin(request: Request) -> bool:
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.headers.get('host')}"


# -- the application ------------------------------------------------------------------------


def build_app(settings: Settings, config: Path | None, listen: str) -> Starlette:
    app = Starlette(routes=ROUTES)
    app.state.web = Web(settings, config)
    app.state.hosts = allowed_hosts(settings, listen)
    return app


def guarded(handler: Callable[[Request, Web], Awaitable[Response]]) -> Callable[..., Any]:
    """The checks every request passes (the token, the Host header, CSRF for changes) before
    its handler, and the headers every answer carries."""

    async def endpoint(request: Request) -> Response:
        web: Web = request.app.state.web
        hosts: set[str] = request.app.state.hosts
        token = request.query_params.get("token")
        if token is not None and hmac.compare_digest(token, web.token):
            # the address `sortbox web` printed: swap the token for a cookie, drop it from the URL
            query = urlencode(
                [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            )
            response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), 303)
            response.set_cookie(COOKIE, web.token, httponly=True, samesite="strict", path="/")
            if host_name(request.headers.get("host", "")) in hosts:
                return response
        refused = refusal(request, web, hosts)
        if refused is not None:
            return refused
        response = await handler(request, web)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
        )
        return response

    return endpoint


# -- the handlers: the pages read files and decode pictures in threads, so that one slow page
# holds no other --------------------------------------------------------------------------------


async def dashboard(request: Request, web: Web) -> Response:
    return await run_in_threadpool(web.dashboard)


async def review(request: Request, web: Web) -> Response:
    return await run_in_threadpool(web.review_page, request)


async def audit(request: Request, web: Web) -> Response:
    return await run_in_threadpool(web.audit_page, request)


async def models(request: Request, web: Web) -> Response:
    return web.render("models.html", title="Models", versions=web.versions())


async def thumb(request: Request, web: Web) -> Response:
    folder, hash12 = request.path_params["folder"], request.path_params["hash12"]
    size = THUMB_SIZES[1] if request.query_params.get("size") == "large" else THUMB_SIZES[0]
    path = None
    if _is_hash12(hash12) and folder in [*web.classes(), REVIEW_FOLDER]:
        path = await run_in_threadpool(web.thumbnail, folder, hash12, size)
    if path is None:
        log.warning("web_refused", why="no such picture", path=request.url.path)
        return PlainTextResponse("no such picture", 404)
    return Response(
        path.read_bytes(),
        media_type="image/webp",
        headers={"Cache-Control": "private, max-age=31536000, immutable"},
    )


async def confusion(request: Request, web: Web) -> Response:
    version, models_dir = request.path_params["version"], web.settings.models_dir
    if version not in [v for v, _ in published_versions(models_dir)]:
        return PlainTextResponse("no such version", 404)
    png = models_dir / version / "confusion.png"
    if not png.is_file():
        return PlainTextResponse("no confusion matrix", 404)
    return Response(png.read_bytes(), media_type="image/png")


async def file_api(request: Request, web: Web) -> Response:
    return await run_in_threadpool(web.file, await _json(request))


async def confirm_api(request: Request, web: Web) -> Response:
    return await run_in_threadpool(web.confirm, await _json(request))


async def rollback_api(request: Request, web: Web) -> Response:
    return web.rollback(str((await _json(request)).get("version", "")))


async def train_api(request: Request, web: Web) -> Response:
    if request.method == "POST":
        return web.start_training()
    return JSONResponse(web.training_state())


async def explain_api(request: Request, web: Web) -> Response:
    data = await request.body()
    if not data:
        return JSONResponse({"error": "send the picture's bytes as the request body"}, 400)
    name = request.headers.get("x-filename", "upload")
    return await run_in_threadpool(web.explain, data, name)


async def status_api(request: Request, web: Web) -> Response:
    from sortbox.daemon.answers.status import gather_status

    status = await run_in_threadpool(gather_status, web.settings)
    return JSONResponse(json.loads(json.dumps(status, default=str)))


async def metrics(request: Request, web: Web) -> Response:
    return web.metrics()


async def static(request: Request, web: Web) -> Response:
    name = request.path_params["name"]
    if name not in STATIC:
        return PlainTextResponse("not found", 404)
    data = (Path(__file__).parent / "static" / name).read_bytes()
    return Response(data, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})


async def login(request: Request) -> Response:
    """The password page, for a page opened from another machine (`[web] password`)."""
    web: Web = request.app.state.web
    password = web.settings.web.password
    if host_name(request.headers.get("host", "")) not in request.app.state.hosts or not password:
        return PlainTextResponse("no login here: use the address `sortbox web` printed", 404)
    if request.method == "GET":
        return HTMLResponse(web.templates.get_template("login.html").render(title="Log in"))
    if not _same_origin(request):
        return PlainTextResponse("cross-site request refused", 403)
    given = parse_qs((await request.body()).decode()).get("password", [""])[0]
    if not hmac.compare_digest(given.encode(), password.encode()):
        log.warning("web_refused", why="wrong password", path="/login")
        time.sleep(1.0)  # a guesser gets one try a second
        return PlainTextResponse("wrong password", 401)
    response = RedirectResponse("/", 303)
    response.set_cookie(COOKIE, web.token, httponly=True, samesite="strict", path="/")
    return response


ROUTES = [
    Route("/", guarded(dashboard)),
    Route("/review", guarded(review)),
    Route("/audit", guarded(audit)),
    Route("/models", guarded(models)),
    Route("/thumb/{folder}/{hash12}", guarded(thumb)),
    Route("/models/{version}/confusion.png", guarded(confusion)),
    Route("/api/file", guarded(file_api), methods=["POST"]),
    Route("/api/confirm", guarded(confirm_api), methods=["POST"]),
    Route("/api/models/rollback", guarded(rollback_api), methods=["POST"]),
    Route("/api/train", guarded(train_api), methods=["GET", "POST"]),
    Route("/api/explain", guarded(explain_api), methods=["POST"]),
    Route("/api/status", guarded(status_api)),
    Route("/metrics", guarded(metrics)),
    Route("/static/{name}", guarded(static)),
    Route("/login", login, methods=["GET", "POST"]),
]
STATIC = {"review.js": "text/javascript", "style.css": "text/css"}


def serve(settings: Settings, config: Path | None, listen: str, port: int) -> int:
    import uvicorn

    check_listen(settings, listen)
    app = build_app(settings, config, listen)
    token = load_or_make_token(settings.library)
    shown = "localhost" if listen in ("127.0.0.1", "::1") else listen
    print(f"sortbox web: open http://{shown}:{port}/?token={token}", flush=True)
    uvicorn.run(app, host=listen, port=port, log_level="warning", server_header=False)
    return 0


# -- small helpers ----------------------------------------------------------------------------


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def _is_hash12(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 12 and all(c in "0123456789abcdef" for c in value)
    )


def _page_number(request: Request) -> int:
    try:
        return max(0, int(request.query_params.get("page", "0")))
    except ValueError:
        return 0


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


def _read_no_follow(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as picture:
        return picture.read()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _latency(events: list[Sorted | Review], now: datetime) -> dict[str, float] | None:
    """Seconds from a file's last write to its decision, over the last day's new files (a
    file written more than an hour before it was decided was there before the daemon ran)."""
    since = now - timedelta(days=1)
    waits = sorted(
        seconds
        for e in events
        if e.ts >= since and e.mtime_ns is not None
        if 0 <= (seconds := e.ts.timestamp() - e.mtime_ns / 1e9) < 3600
    )
    if not waits:
        return None
    return {
        "files": len(waits),
        "p50": waits[len(waits) // 2],
        "p95": waits[min(len(waits) - 1, int(len(waits) * 0.95))],
    }


def _promise(promised: float | None) -> str | None:
    from sortbox.daemon.sorting.thresholds import promise_words

    return promise_words(promised) if promised is not None else None


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _corrections(events: list[Event], library: Path) -> list[tuple[str, str, int]]:
    """(from, to, count): which class the user moved auto-sorted pictures from and to."""
    from sortbox.daemon.answers.feedback import folders_by_hash

    where = folders_by_hash(library)
    moved: Counter[tuple[str, str]] = Counter()
    latest = Decisions.of(events).by_hash
    for hash12, event in latest.items():
        if not isinstance(event, Sorted) or not event.dest:
            continue
        put = event.dest.split("/", 1)[0]
        now = where.get(hash12, set()) - {put}
        if now and put not in where.get(hash12, set()):
            for folder in now:
                moved[(put, folder)] += 1
    return sorted(((a, b, n) for (a, b), n in moved.items()), key=lambda row: -row[2])
