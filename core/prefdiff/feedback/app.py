"""The labeling web app (Starlette): the page, its JSON API and the sample images.

Routes::

    GET  /                    the page (``?labeler=NAME``), with a token for the API
    GET  /api/token           a fresh token, for scripts and for a page the server outlived
    GET  /api/next?labeler=   the next pair for a labeler, which side is left, progress
    POST /api/answer          {"pair", "labeler", "answer": "a"|"b"|"tie"|"skip"}
    POST /api/undo            {"labeler"}: retract that labeler's last answer
    GET  /api/stats           answers per labeler and agreement on shared pairs
    GET  /files/{path}        a condition or sample file of the folder, drawn as PNG

Any web page the labeler's browser opens can send requests to 127.0.0.1, so
every request must name this server in ``Host`` (a DNS-rebinding page names
its own domain) and must not come from another origin (``Origin``, and
``Sec-Fetch-Site`` where the browser sends it); a POST must be
``application/json`` of at most 64 KiB and carry the page's token in
``X-Prefdiff-Token``, which a page from elsewhere can neither read nor send
without a CORS preflight this server never grants.

A bad request gets a 4xx with a one-line ``{"error": ...}`` and changes nothing.
Only ``.safetensors`` files inside the sample folder are ever read for /files.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import re
import secrets
from pathlib import Path
from typing import Any, Callable, Iterable

from prefdiff.errors import UserError
from prefdiff.feedback import require_web_stack
from prefdiff.feedback.candidates import CandidatePool, load_tensors
from prefdiff.feedback.store import ANSWERS, LabelConflict, LabelStore, Reservations

_LABELER = re.compile(r"^[\w.@+\- ]{1,64}$")
PAGE = Path(__file__).with_name("page.html")
MAX_BODY = 64 * 1024  # bytes: an answer is about 100
TOKEN_HEADER = "X-Prefdiff-Token"
LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")


def left_side(pair_id: str, labeler: str) -> str:
    """Which sample ('a' or 'b') a labeler sees on the left: fixed per pair and labeler,
    and balanced over pairs, so a habit of picking one side does not become a preference."""
    return "a" if hashlib.sha256(f"{pair_id}\0{labeler}".encode()).digest()[0] % 2 == 0 else "b"


class PageTokens:
    """Tokens issued with each page load; every POST must carry one.

    A token is a random nonce and its HMAC under this server process's secret,
    so any number can be issued without keeping them and none forged without
    the secret. A restarted server has a new secret: its page asks for a new
    token (``GET /api/token``, which only the server's own origin can read).
    """

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def issue(self) -> str:
        """A new token."""
        nonce = secrets.token_hex(16)
        return f"{nonce}.{self._sign(nonce)}"

    def valid(self, token: str | None) -> bool:
        """Whether ``token`` was issued by this process."""
        nonce, _, mac = (token or "").partition(".")
        return bool(nonce) and mac.isascii() and hmac.compare_digest(mac, self._sign(nonce))

    def _sign(self, nonce: str) -> str:
        return hmac.new(self._key, nonce.encode(), hashlib.sha256).hexdigest()


def split_host(host: str, scheme: str = "http") -> tuple[str, int | None]:
    """``"127.0.0.1:8765"`` -> ``("127.0.0.1", 8765)``; the scheme's port when none is given; None when bad."""
    name, sep, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not sep:
        name, port = host, {"http": "80", "https": "443"}.get(scheme, "")
    return name.lower(), int(port) if port.isdigit() else None


class Guard:
    """ASGI middleware refusing requests that do not come from the labeling page itself (see the module doc).

    :param names: host names besides 127.0.0.1/localhost under which the server may be opened
        (the ``--host`` it binds); the port must be the one the request arrived on.
    """

    def __init__(self, app, tokens: PageTokens, names: Iterable[str] = ()) -> None:
        self.app, self.tokens = app, tokens
        self.names = {n.lower() for n in (*LOCAL_NAMES, *names)}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                from starlette.responses import JSONResponse

                status, message = refusal
                await JSONResponse({"error": message}, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope) -> tuple[int, str] | None:
        """``(status, message)`` for a request to refuse, None to let it through."""
        from starlette.datastructures import Headers

        headers = Headers(scope=scope)
        reading = scope["method"] in ("GET", "HEAD")
        return self.foreign(scope, headers, reading) or (None if reading else self.malformed(headers))

    def foreign(self, scope, headers, reading: bool) -> tuple[int, str] | None:
        """Refuse a request for another name (DNS rebinding) or from another origin or site."""
        host, scheme, server = headers.get("host", ""), scope.get("scheme", "http"), scope.get("server")
        if not self.host_ok(host, scheme, server):
            port = server[1] if server and server[1] else "PORT"
            return 403, f"Host {host!r} is not this server's address; open http://127.0.0.1:{port}/"
        origin = headers.get("origin")
        if origin is not None and origin.lower() != f"{scheme}://{host}".lower():
            return 403, f"requests from the page at {origin} are refused; use the labeling page itself"
        # Browsers say where a request comes from; only opening the page may come from elsewhere (a link).
        site, mode = headers.get("sec-fetch-site", "same-origin"), headers.get("sec-fetch-mode")
        if site not in ("same-origin", "none") and not (reading and mode == "navigate"):
            return 403, "requests from other sites are refused; use the labeling page itself"
        return None

    def malformed(self, headers) -> tuple[int, str] | None:
        """Refuse a POST that is too big, not JSON, or without this server's token."""
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY:  # refused before a byte of it is read
            return 413, f"the body must be at most {MAX_BODY} bytes"
        if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return 415, "the body must be application/json"
        if not self.tokens.valid(headers.get(TOKEN_HEADER)):
            return 403, (f"missing or stale {TOKEN_HEADER} header; reload the page, or GET /api/token "
                         f"and send it with each POST")
        return None

    def host_ok(self, host: str, scheme: str, server: tuple[str, int | None] | None) -> bool:
        """Whether ``host`` names this server: a known name, and the port the request came in on."""
        name, port = split_host(host, scheme)
        if server is None or server[1] is None:  # e.g. a Unix socket: no browser reaches it by name
            return name in self.names
        bound = server[0].lower() if ":" not in server[0] else f"[{server[0].lower()}]"
        return port == server[1] and name in (self.names | {bound})


def render_markdown(text: str) -> str:
    """A safe subset of Markdown as HTML: paragraphs, ``- `` lists, **bold**, *italic*, `code`.

    Everything is escaped first, so raw HTML in the file shows as text and
    only the tags made here reach the page.
    """
    blocks: list[str] = []
    paragraph: list[str] = []
    items: list[str] = []

    def flush() -> None:
        if paragraph:
            blocks.append(f"<p>{_inline(' '.join(paragraph))}</p>")
        if items:
            blocks.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in items) + "</ul>")
        paragraph.clear()
        items.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("- ") or stripped == "-":
            if paragraph:
                flush()
            items.append(stripped[2:])
        elif stripped:
            if items:
                flush()
            paragraph.append(stripped)
        else:
            flush()
    flush()
    return "\n".join(blocks)


def _inline(text: str) -> str:
    """Escape ``text`` and mark up `code`, **bold** and *italic* (none inside code)."""
    parts = re.split(r"`([^`]+)`", text)  # odd parts are code spans
    out = []
    for i, part in enumerate(parts):
        part = html.escape(part)
        if i % 2:
            out.append(f"<code>{part}</code>")
        else:
            part = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", part)
            out.append(re.sub(r"\*(.+?)\*", r"<em>\1</em>", part))
    return "".join(out)


def create_app(pool: CandidatePool, store: LabelStore, *, default_labeler: str = "anonymous",
               labels_per_pair: int = 2, drawer: Callable[[Any], Any] | None = None, instructions: str = "",
               host_names: Iterable[str] = (), hold_seconds: float = 300.0):
    """The Starlette app serving ``pool``'s pairs and writing answers to ``store``.

    :param labels_per_pair: labelers asked per pair; also the most answers a pair takes.
    :param instructions: Markdown shown above the pair (:func:`render_markdown`).
    :param host_names: names besides 127.0.0.1/localhost the page may be opened under.
    :param hold_seconds: how long a pair handed out to one labeler is kept from others
        when they would exceed ``labels_per_pair``.
    """
    require_web_stack()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    from prefdiff.feedback.agreement import agreement
    from prefdiff.feedback.drawing import draw_condition, draw_sample

    folder = pool.folder
    pair_root = pool.pair_root
    tokens = PageTokens()
    reservations = Reservations(hold_seconds)
    instructions_html = render_markdown(instructions)

    def labeler_of(value: Any) -> str:
        if not isinstance(value, str) or not _LABELER.match(value):
            raise HTTPException(400, f"labeler must be 1-64 letters, digits, spaces or . @ + - _, got {value!r}")
        return value

    def progress(labeler: str) -> dict[str, int]:
        answered = store.answered()
        mine = sum(1 for who in answered.values() if labeler in who)
        remaining = pool.remaining_for(labeler, reservations.view(labeler, answered), labels_per_pair)
        return {"answered": mine, "remaining": remaining}

    async def body(request: Request) -> dict[str, Any]:
        raw = bytearray()
        async for chunk in request.stream():  # stops at the cap even without a Content-Length
            raw += chunk
            if len(raw) > MAX_BODY:
                raise HTTPException(413, f"the body must be at most {MAX_BODY} bytes")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested too deep to be an answer
            raise HTTPException(400, "the body must be a JSON object") from None
        if not isinstance(data, dict):
            raise HTTPException(400, "the body must be a JSON object")
        return data

    async def page(request: Request) -> HTMLResponse:
        labeler = request.query_params.get("labeler", default_labeler)
        try:
            labeler_of(labeler)
        except HTTPException as exc:
            return HTMLResponse(html.escape(exc.detail), status_code=400)  # the name is echoed: escape it
        fields = {"LABELER": json.dumps(labeler), "TOKEN": json.dumps(tokens.issue()),
                  "INSTRUCTIONS": instructions_html}
        # One pass, so text substituted in is never substituted again.
        text = re.sub(r"\{\{(\w+)\}\}", lambda m: fields[m[1]], PAGE.read_text())
        # No framing: a page elsewhere must not overlay ours and borrow the labeler's clicks.
        return HTMLResponse(text, headers={"X-Frame-Options": "DENY", "Cache-Control": "no-store",
                                           "Content-Security-Policy": "frame-ancestors 'none'"})

    async def token(request: Request) -> JSONResponse:
        return JSONResponse({"token": tokens.issue()}, headers={"Cache-Control": "no-store"})

    def describe(pair: dict[str, Any] | None, labeler: str) -> dict[str, Any]:
        if pair is None:
            return {"pair": None, "progress": progress(labeler)}
        left = left_side(pair["id"], labeler)
        right = "b" if left == "a" else "a"
        url = lambda rel: "/files/" + rel  # noqa: E731
        return {"pair": {"id": pair["id"], "left": left, "right": right, "condition": url(pair["condition"]),
                         "left_url": url(pair[left]), "right_url": url(pair[right])},
                "progress": progress(labeler)}

    def hand_out(labeler: str) -> dict[str, Any] | None:
        pick = lambda view: pool.next_for(labeler, view, labels_per_pair)  # noqa: E731
        return reservations.hand_out(labeler, store.answered(), pick)

    async def next_pair(request: Request) -> JSONResponse:
        labeler = labeler_of(request.query_params.get("labeler", default_labeler))
        pair = await run_in_threadpool(hand_out, labeler)
        return JSONResponse(describe(pair, labeler))

    async def answer(request: Request) -> JSONResponse:
        data = await body(request)
        labeler = labeler_of(data.get("labeler"))
        choice = data.get("answer")
        if choice not in ANSWERS:
            raise HTTPException(400, f"answer must be one of {', '.join(ANSWERS)}, got {choice!r}")
        pid = data.get("pair")
        if not isinstance(pid, str):
            raise HTTPException(400, "pair must be a pair id string")
        pair = pool.pairs.get(pid)
        if pair is None:
            raise HTTPException(404, f"unknown pair id {pid!r}")
        record = await run_in_threadpool(store.record, pair, labeler, choice, labels_per_pair=labels_per_pair)
        return JSONResponse({"recorded": record, "progress": progress(labeler)})

    async def undo(request: Request) -> JSONResponse:
        labeler = labeler_of((await body(request)).get("labeler"))
        last = await run_in_threadpool(store.undo, labeler)
        if last is None:
            raise HTTPException(409, f"labeler '{labeler}' has no answer to undo")
        return JSONResponse({"undone": {"pair": last.pair, "answer": last.answer},
                             "progress": progress(labeler)})

    async def stats(request: Request) -> JSONResponse:
        records = store.records(store.pair_file)
        return JSONResponse({"answers": len(records), "pairs": len(pool.pairs), **agreement(records)})

    async def files(request: Request) -> Response:
        rel = request.path_params["path"]
        try:
            path = (pair_root / rel).resolve()
        except (OSError, RuntimeError, ValueError):
            raise HTTPException(400, f"bad path {rel!r}") from None
        if not path.is_relative_to(folder):
            raise HTTPException(403, f"{rel!r} is outside the sample folder; only its files are served")
        if path.suffix != ".safetensors" or not path.is_file():
            raise HTTPException(404, f"no sample or condition file {rel!r} in the sample folder")
        try:
            tensors = await run_in_threadpool(load_tensors, path)
        except Exception:
            raise HTTPException(404, f"{rel!r} is not a readable safetensors file") from None
        if path.parent == folder / "conds" or "sample" not in tensors:
            png = await run_in_threadpool(draw_condition, tensors, drawer)
        else:
            png = await run_in_threadpool(draw_sample, tensors["sample"])
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    def error(status: int) -> Callable[[Request, Exception], JSONResponse]:
        def handler(request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"error": str(getattr(exc, "detail", exc))},
                                status_code=getattr(exc, "status_code", status), headers=getattr(exc, "headers", None))
        return handler

    routes = [Route("/", page), Route("/api/token", token), Route("/api/next", next_pair),
              Route("/api/answer", answer, methods=["POST"]), Route("/api/undo", undo, methods=["POST"]),
              Route("/api/stats", stats), Route("/files/{path:path}", files)]
    # UserError: the pair file could not be read or written (a full disk, a foreign line); the
    # message says which file and what to do, and the page shows it.
    handlers = {HTTPException: error(400), LabelConflict: error(409), UserError: error(500)}
    return Starlette(routes=routes, exception_handlers=handlers,
                     middleware=[Middleware(Guard, tokens=tokens, names=host_names)])
