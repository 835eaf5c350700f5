"""Build the labeling app from `prefdiff label`'s options and serve it on uvicorn."""

from __future__ import annotations

import argparse
from pathlib import Path

from prefdiff.errors import UserError
from prefdiff.feedback import require_web_stack


def build(args: argparse.Namespace):
    """The Starlette app (and its pool and store) for parsed `prefdiff label` options."""
    import os

    from prefdiff.options import parse_options
    from prefdiff.feedback.app import create_app
    from prefdiff.feedback.candidates import CandidatePool, ModelSource
    from prefdiff.feedback.drawing import condition_drawer
    from prefdiff.feedback.store import LabelStore
    from prefdiff.plugins import get_manager

    folder = Path(args.folder)
    if args.labels_per_pair < 1:
        raise UserError(f"--labels-per-pair must be >= 1, got {args.labels_per_pair}")
    if args.model is None and not folder.is_dir():
        raise UserError(f"sample folder {folder} does not exist; pass a folder of samples or --model to "
                        f"draw them")
    if args.model is not None and args.dataset is None:
        raise UserError("--model needs --dataset to give the conditions to sample")
    instructions = read_instructions(args.instructions)
    dataset_options = parse_options(args.dataset_option, "--dataset-option")
    source = None
    if args.model is not None:
        source = ModelSource(args.model, args.dataset, lora=args.lora, conditioner=args.conditioner,
                             dataset_options=dataset_options, split=args.split,
                             per_condition=args.per_condition, num_steps=args.steps, seed=args.seed)
        folder.mkdir(parents=True, exist_ok=True)
    reward = (get_manager().reward(args.reward, **parse_options(args.reward_option, "--reward-option"))
              if args.reward else None)
    pair_file = Path(args.pairs) if args.pairs else folder / "pairs.jsonl"
    pool = CandidatePool(folder, pair_file, reward=reward, source=source, seed=args.seed)
    store = LabelStore(pair_file)
    store.answered()  # a foreign line in the pair file stops us here, not at the first answer
    labeler = args.labeler or os.environ.get("USER") or "anonymous"
    app = create_app(pool, store, default_labeler=labeler, labels_per_pair=args.labels_per_pair,
                     drawer=condition_drawer(args.dataset), instructions=instructions,
                     host_names=[args.host])
    return app, pool, store


def read_instructions(path: str | None) -> str:
    """The Markdown of ``--instructions FILE`` ("" without one)."""
    if path is None:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise UserError(f"--instructions {path}: cannot read it ({reason}); pass a Markdown file") from None


def serve(args: argparse.Namespace) -> int:
    """Serve the labeling page for parsed `prefdiff label` options until interrupted."""
    require_web_stack()
    import uvicorn

    app, pool, store = build(args)
    sock = listening_socket(args.host, args.port)
    print(f"labeling {len(pool.pairs)} candidate pairs from {pool.folder}; answers go to {store.pair_file}")
    # Printed once the socket is bound, so the address is the real one (also with --port 0).
    print(f"open http://{args.host}:{sock.getsockname()[1]}/?labeler=NAME", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    return 0


def listening_socket(host: str, port: int):
    """A socket bound to ``host:port`` (port 0: a free one the system picks), or one clear error."""
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart right after a kill rebinds
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(128)  # connections wait in the backlog until uvicorn takes over, never refused
    except OSError as exc:
        sock.close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({exc.strerror}); pass another "
                        f"--port, or --port 0 for a free one") from None
    return sock
