"""`prefdiff label` as its own process: a SIGKILL between answers loses none, a crash mid-write loses
none either, a restart asks none twice."""

import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch

from prefdiff.data import read_pairs
from prefdiff.feedback.app import TOKEN_HEADER
from prefdiff.feedback.candidates import write_sample_folder


def _start(folder):
    """``prefdiff label`` on a port the system picks (``--port 0``), and the url it prints once bound:
    no other test worker can take the port between choosing and binding it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "prefdiff.cli", "label", str(folder), "--port", "0",
                             "--labeler", "ann", "--labels-per-pair", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, bufsize=0)
    deadline, output = time.monotonic() + 60, b""
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:  # the server exited
                proc.wait()
                raise AssertionError(f"prefdiff label exited: {output.decode()}")
            output += chunk
            match = re.search(rb"open (http://127\.0\.0\.1:\d+)/", output)
            if match:
                url = match.group(1).decode()
                try:
                    httpx.get(f"{url}/api/stats", timeout=60).raise_for_status()
                except httpx.HTTPError:
                    proc.kill()  # a failed start leaves no server behind
                    proc.wait()
                    raise
                return proc, url
    proc.kill()
    proc.wait()
    raise AssertionError(f"prefdiff label printed no address in 60 s: {output.decode()}")


def test_a_taken_port_is_one_clear_error(tmp_path):
    write_sample_folder(tmp_path, torch.rand(2, 3, 3, 8, 8) * 2 - 1, [torch.tensor(i) for i in range(2)])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "prefdiff.cli", "label", str(tmp_path), "--port", str(port)],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr
    assert f"--port {port}: cannot listen there" in done.stderr and "--port 0" in done.stderr
    assert not (tmp_path / "pairs.jsonl").exists() or not (tmp_path / "pairs.jsonl").read_text()


@contextlib.contextmanager
def _client(url):
    """A client holding a token, as the page does."""
    with httpx.Client(base_url=url, timeout=30) as client:
        client.headers[TOKEN_HEADER] = client.get("/api/token").json()["token"]
        yield client


def _answer(url, labeler, n):
    ids = []
    with _client(url) as c:
        for i in range(n):
            pair = c.get("/api/next", params={"labeler": labeler}).json()["pair"]
            c.post("/api/answer", json={"pair": pair["id"], "labeler": labeler,
                                        "answer": "ab"[i % 2]}).raise_for_status()
            ids.append(pair["id"])
    return ids


def test_sigkill_between_answers_loses_nothing_and_restart_resumes(tmp_path):
    write_sample_folder(tmp_path, torch.rand(4, 3, 3, 8, 8) * 2 - 1, [torch.tensor(i) for i in range(4)])
    proc, url = _start(tmp_path)
    try:
        first = _answer(url, "ann", 4)
        with _client(url) as c:
            c.post("/api/undo", json={"labeler": "ann"}).raise_for_status()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    kept = first[:3]
    assert [r["id"] for r in read_pairs(tmp_path / "pairs.jsonl")] == kept
    # A crash in the middle of a write leaves half a record and no newline.
    with open(tmp_path / "pairs.jsonl", "ab") as handle:
        handle.write(b'{"a": "samples/c000003_0.safetensors", "condition": "conds/c0000')

    proc, url = _start(tmp_path)
    try:
        with httpx.Client(base_url=url) as c:
            assert c.get("/api/next", params={"labeler": "ann"}).json()["progress"] == {"answered": 3, "remaining": 9}
        second = _answer(url, "ann", 9)
        with httpx.Client(base_url=url) as c:
            last = c.get("/api/next", params={"labeler": "ann"}).json()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not set(second) & set(kept), "a pair answered before the kill was asked again"
    assert last["pair"] is None and last["progress"] == {"answered": 12, "remaining": 0}
    records = read_pairs(tmp_path / "pairs.jsonl")
    assert [r["id"] for r in records] == kept + second
    assert [r["winner"] for r in records] == ["a", "b", "a"] + ["a", "b"] * 4 + ["a"]
    assert b"conds/c0000\n" in (tmp_path / "pairs.jsonl.torn").read_bytes()


def test_agreement_command_reports_shared_pairs(tmp_path, capsys):
    from prefdiff.cli import main

    answers = [("p0", "ann", "a"), ("p0", "bob", "a"), ("p1", "ann", "b"), ("p1", "bob", "a")]
    lines = [{"id": pid, "condition": "c", "a": "x", "b": "y", "winner": w, "labeler": who, "time": i}
             for i, (pid, who, w) in enumerate(answers)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main(["label", str(tmp_path), "--agreement"]) == 0
    out = capsys.readouterr().out
    assert "pairs answered by two or more labelers: 2" in out
    assert "ann vs bob: 2 shared, agreement 0.500" in out


@pytest.mark.parametrize("argv, message", [
    (["label", "/nonexistent/folder"], "does not exist"),
    (["label", "{tmp}", "--labels-per-pair", "0"], "--labels-per-pair must be >= 1"),
    (["label", "{tmp}"], "holds no candidate pairs"),
    (["label", "{tmp}", "--model", "m"], "--model needs --dataset"),
    (["label", "{tmp}", "--instructions", "{tmp}/none.md"], "--instructions {tmp}/none.md: cannot read it"),
    (["reward-model", "train", "{tmp}/none.jsonl", "--out", "{tmp}/rm"], "does not exist"),
])
def test_user_errors_are_one_line_exit_2(tmp_path, capsys, argv, message):
    from prefdiff.cli import main

    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and len(err.strip().splitlines()) == 1


def test_a_foreign_line_in_the_pair_file_stops_the_server_at_start(tmp_path, capsys, monkeypatch):
    import uvicorn

    from prefdiff.cli import main

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    write_sample_folder(tmp_path, torch.rand(1, 2, 3, 8, 8), [torch.tensor(0)])
    (tmp_path / "pairs.jsonl").write_text('left is better\n{"id": "c000000-0-1"}\n')
    assert main(["label", str(tmp_path)]) == 2
    assert "pairs.jsonl:1 is not a JSON record (Expecting value); fix or delete that line" in capsys.readouterr().err


def test_label_draws_from_a_model_and_ranks_by_a_reward(tmp_path):
    from starlette.testclient import TestClient

    from prefdiff.cli import _parse
    from prefdiff.feedback.server import build
    from prefdiff.models import save_model
    from prefdiff.testing import tiny_denoiser, tiny_scheduler

    save_model(tiny_denoiser(sample_size=8), tmp_path / "base")
    tiny_scheduler().save_pretrained(tmp_path / "base" / "scheduler")
    (tmp_path / "task.md").write_text("Prefer **smooth** textures.")
    args = _parse(["label", str(tmp_path / "labels"), "--model", str(tmp_path / "base"),
                   "--dataset", "synthetic_textures", "--dataset-option", "resolution=8",
                   "--conditioner", "class_label", "--steps", "2", "--per-condition", "3",
                   "--reward", "smoothness", "--instructions", str(tmp_path / "task.md")], {})["label"]
    app, pool, store = build(args)
    assert len(pool.pairs) == 8 * 3  # one draw: 8 conditions x 3 pairs
    margins = [pool.margin[pid] for pid in pool.order]
    assert margins == sorted(margins) and margins[0] < margins[-1]
    with TestClient(app) as client:
        assert "<p>Prefer <strong>smooth</strong> textures.</p>" in client.get("/").text
        first = client.get("/api/next", params={"labeler": "ann"}).json()["pair"]
        assert first["id"] == pool.order[0]
        condition = client.get(first["condition"])  # drawn by the example plugin's draw_condition
        assert condition.status_code == 200 and condition.content[:4] == b"\x89PNG"
        from PIL import Image
        import io
        assert Image.open(io.BytesIO(condition.content)).size == (160, 96)  # not the generic text drawing
