"""The labeling web app (Starlette): the page, its JSON API and the sample images.

Routes::

    GET  /                    the page (``?labeler=NAME``)
    GET  /api/next?labeler=   the next pair for a labeler, which side is left, progress
    POST /api/answer          {"pair", "labeler", "answer": "a"|"b"|"tie"|"skip"}
    POST /api/undo            {"labeler"}: retract that labeler's last answer
    GET  /api/stats           answers per labeler and agreement on shared pairs
    GET  /files/{path}        a condition or sample file of the folder, drawn as PNG

A bad request gets a 4xx with a one-line ``{"error": ...}`` and changes nothing.
Only ``.safetensors`` files inside the sample folder are ever read for /files.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable

from prefdiff.feedback import require_web_stack
from prefdiff.feedback.candidates import CandidatePool, load_tensors
from prefdiff.feedback.store import ANSWERS, LabelConflict, LabelStore

_LABELER = re.compile(r"^[\w.@+\- ]{1,64}$")
PAGE = Path(__file__).with_name("page.html")


def left_side(pair_id: str, labeler: str) -> str:
    """Which sample ('a' or 'b') a labeler sees on the left: fixed per pair and labeler,
    and balanced over pairs, so a habit of picking one side does not become a preference."""
    return "a" if hashlib.sha256(f"{pair_id}\0{labeler}".encode()).digest()[0] % 2 == 0 else "b"


def create_app(pool: CandidatePool, store: LabelStore, *, default_labeler: str = "anonymous",
               labels_per_pair: int = 2, drawer: Callable[[Any], Any] | None = None):
    """The Starlette app serving ``pool``'s pairs and writing answers to ``store``."""
    require_web_stack()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    from prefdiff.feedback.agreement import agreement
    from prefdiff.feedback.drawing import draw_condition, draw_sample

    folder = pool.folder
    pair_root = pool.pair_root

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def labeler_of(value: Any) -> str:
        if not isinstance(value, str) or not _LABELER.match(value):
            raise ValueError(f"labeler must be 1-64 letters, digits, spaces or . @ + - _, got {value!r}")
        return value

    def progress(labeler: str) -> dict[str, int]:
        answered = store.answered()
        mine = sum(1 for who in answered.values() if labeler in who)
        return {"answered": mine, "remaining": pool.remaining_for(labeler, answered, labels_per_pair)}

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError("the body must be a JSON object") from None
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        return data

    async def page(request: Request) -> HTMLResponse:
        labeler = request.query_params.get("labeler", default_labeler)
        try:
            labeler_of(labeler)
        except ValueError as exc:
            return HTMLResponse(str(exc), status_code=400)
        html = PAGE.read_text().replace("{{LABELER}}", json.dumps(labeler))
        return HTMLResponse(html)

    def describe(pair: dict[str, Any] | None, labeler: str) -> dict[str, Any]:
        if pair is None:
            return {"pair": None, "progress": progress(labeler)}
        left = left_side(pair["id"], labeler)
        right = "b" if left == "a" else "a"
        url = lambda rel: "/files/" + rel  # noqa: E731
        return {"pair": {"id": pair["id"], "left": left, "right": right, "condition": url(pair["condition"]),
                         "left_url": url(pair[left]), "right_url": url(pair[right])},
                "progress": progress(labeler)}

    async def next_pair(request: Request) -> JSONResponse:
        try:
            labeler = labeler_of(request.query_params.get("labeler", default_labeler))
        except ValueError as exc:
            return error(400, str(exc))
        answered = store.answered()
        pair = await run_in_threadpool(pool.next_for, labeler, answered, labels_per_pair)
        return JSONResponse(describe(pair, labeler))

    async def answer(request: Request) -> JSONResponse:
        try:
            data = await body(request)
            labeler = labeler_of(data.get("labeler"))
            choice = data.get("answer")
            if choice not in ANSWERS:
                raise ValueError(f"answer must be one of {', '.join(ANSWERS)}, got {choice!r}")
            pid = data.get("pair")
            if not isinstance(pid, str):
                raise ValueError("pair must be a pair id string")
        except ValueError as exc:
            return error(400, str(exc))
        pair = pool.pairs.get(pid)
        if pair is None:
            return error(404, f"unknown pair id {pid!r}")
        try:
            record = await run_in_threadpool(store.record, pair, labeler, choice)
        except LabelConflict as exc:
            return error(409, str(exc))
        return JSONResponse({"recorded": record, "progress": progress(labeler)})

    async def undo(request: Request) -> JSONResponse:
        try:
            labeler = labeler_of((await body(request)).get("labeler"))
        except ValueError as exc:
            return error(400, str(exc))
        last = await run_in_threadpool(store.undo, labeler)
        if last is None:
            return error(409, f"labeler '{labeler}' has no answer to undo")
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
            return error(400, f"bad path {rel!r}")
        if not path.is_relative_to(folder):
            return error(403, f"{rel!r} is outside the sample folder; only its files are served")
        if path.suffix != ".safetensors" or not path.is_file():
            return error(404, f"no sample or condition file {rel!r} in the sample folder")
        try:
            tensors = await run_in_threadpool(load_tensors, path)
        except Exception:
            return error(404, f"{rel!r} is not a readable safetensors file")
        if path.parent == folder / "conds" or "sample" not in tensors:
            png = await run_in_threadpool(draw_condition, tensors, drawer)
        else:
            png = await run_in_threadpool(draw_sample, tensors["sample"])
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    routes = [Route("/", page), Route("/api/next", next_pair), Route("/api/answer", answer, methods=["POST"]),
              Route("/api/undo", undo, methods=["POST"]), Route("/api/stats", stats),
              Route("/files/{path:path}", files)]
    return Starlette(routes=routes)
