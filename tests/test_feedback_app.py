"""The labeling app's API: the next pair, answers, undo, progress, bad requests, labelers at once."""

import threading

import httpx
import pytest
import torch

from prefdiff.data import read_pairs
from prefdiff.feedback.app import create_app, left_side
from prefdiff.feedback.candidates import CandidatePool, write_sample_folder
from prefdiff.feedback.demo import ThreadedServer
from prefdiff.feedback.store import LabelStore


@pytest.fixture
def folder(tmp_path):
    write_sample_folder(tmp_path / "samples_dir", torch.rand(4, 3, 3, 8, 8) * 2 - 1,
                        [torch.tensor(i) for i in range(4)])
    (tmp_path / "secret.safetensors").write_bytes(b"outside the sample folder")
    return tmp_path / "samples_dir"


def _app(folder, **options):
    pair_file = folder / "pairs.jsonl"
    return create_app(CandidatePool(folder, pair_file), LabelStore(pair_file), **options)


@pytest.fixture
def client(folder):
    from starlette.testclient import TestClient

    with TestClient(_app(folder, labels_per_pair=1)) as c:
        yield c


def test_next_answer_progress_undo(client, folder):
    first = client.get("/api/next", params={"labeler": "ann"}).json()
    pair = first["pair"]
    assert first["progress"] == {"answered": 0, "remaining": 12}
    assert pair["left"] == left_side(pair["id"], "ann") and {pair["left"], pair["right"]} == {"a", "b"}
    for url in (pair["condition"], pair["left_url"], pair["right_url"]):
        image = client.get(url)
        assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
    done = client.post("/api/answer", json={"pair": pair["id"], "labeler": "ann", "answer": "b"})
    assert done.status_code == 200 and done.json()["progress"] == {"answered": 1, "remaining": 11}
    assert [r["winner"] for r in read_pairs(folder / "pairs.jsonl")] == ["b"]
    second = client.get("/api/next", params={"labeler": "ann"}).json()["pair"]
    assert second["id"] != pair["id"]
    # With one label per pair, another labeler is not asked ann's pair.
    assert client.get("/api/next", params={"labeler": "bob"}).json()["pair"]["id"] != pair["id"]
    undone = client.post("/api/undo", json={"labeler": "ann"}).json()
    assert undone["undone"] == {"pair": pair["id"], "answer": "b"}
    assert (folder / "pairs.jsonl").read_text() == ""
    assert client.get("/api/next", params={"labeler": "ann"}).json()["pair"]["id"] == pair["id"]
    assert "ann" in client.get("/", params={"labeler": "ann"}).text


def _bad_requests(pair_id):
    def answer(**fields):
        return "post", "/api/answer", {"json": {"pair": pair_id, "labeler": "ann", "answer": "a", **fields}}

    def get(url, **kwargs):
        return "get", url, kwargs

    return {
        "unknown pair id": (404, "unknown pair id", answer(pair="c999999-0-1")),
        "body not JSON": (400, "JSON object", ("post", "/api/answer", {"content": b"left please"})),
        "body a JSON list": (400, "JSON object", ("post", "/api/answer", {"json": [pair_id, "a"]})),
        "no answer": (400, "answer must be one of",
                      ("post", "/api/answer", {"json": {"pair": pair_id, "labeler": "ann"}})),
        "bad answer": (400, "answer must be one of", answer(answer="left")),
        "pair not a string": (400, "pair id string", answer(pair=3)),
        "bad labeler": (400, "labeler must be", answer(labeler="<script>")),
        "labeler missing": (400, "labeler must be",
                            ("post", "/api/answer", {"json": {"pair": pair_id, "answer": "a"}})),
        "answered twice": (409, "already answered", answer(answer="b")),
        "undo bad body": (400, "JSON object", ("post", "/api/undo", {"content": b"{"})),
        "undo nothing": (409, "no answer to undo", ("post", "/api/undo", {"json": {"labeler": "zed"}})),
        "next bad labeler": (400, "labeler must be", get("/api/next", params={"labeler": ""})),
        "path outside folder": (403, "outside the sample folder", get("/files/%2e%2e/secret.safetensors")),
        "absolute path": (403, "outside the sample folder", get("/files//etc/passwd")),
        "deep traversal": (403, "outside the sample folder",
                           get("/files/samples/%2e%2e/%2e%2e/%2e%2e/etc/hostname")),
        "null byte in path": (400, "bad path", get("/files/samples/c000000_0%00.safetensors")),
        "not a sample file": (404, "no sample or condition file", get("/files/pairs.jsonl")),
        "missing file": (404, "no sample or condition file", get("/files/samples/nope_0.safetensors")),
        "GET on answer": (405, None, get("/api/answer")),
    }


@pytest.mark.parametrize("case", list(_bad_requests("x")))
def test_bad_request_is_4xx_with_message_and_changes_nothing(client, folder, case):
    pair = client.get("/api/next", params={"labeler": "ann"}).json()["pair"]
    client.post("/api/answer", json={"pair": pair["id"], "labeler": "ann", "answer": "a"}).raise_for_status()
    files = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    status, message, (method, url, kwargs) = _bad_requests(pair["id"])[case]
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status, response.text
    if message is not None:
        assert message in response.json()["error"]
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == files


def test_symlink_out_of_the_folder_is_not_served(client, folder):
    (folder / "samples" / "evil_0.safetensors").symlink_to(folder.parent / "secret.safetensors")
    response = client.get("/files/samples/evil_0.safetensors")
    assert response.status_code == 403 and b"outside" in response.content


def test_two_labelers_posting_at_once_both_land(folder):
    app = _app(folder, labels_per_pair=2)
    pairs = sorted(CandidatePool(folder, folder / "pairs.jsonl").pairs)
    barrier = threading.Barrier(2)
    errors = []

    def labeler(name, url):
        with httpx.Client(base_url=url) as c:
            for pid in pairs:
                barrier.wait()  # both post the same pair at the same moment
                r = c.post("/api/answer", json={"pair": pid, "labeler": name, "answer": "a"})
                if r.status_code != 200:
                    errors.append(r.text)

    with ThreadedServer(app) as server:
        threads = [threading.Thread(target=labeler, args=(name, server.url)) for name in ("ann", "bob")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        stats = httpx.get(server.url + "/api/stats").json()
    assert errors == []
    records = read_pairs(folder / "pairs.jsonl")
    assert sorted((r["id"], r["labeler"]) for r in records) == sorted(
        (p, name) for p in pairs for name in ("ann", "bob"))
    assert stats["shared_pairs"] == len(pairs) and stats["agreement"] == 1.0


def test_missing_web_stack_names_the_pip_install(folder, monkeypatch):
    from prefdiff.errors import UserError

    monkeypatch.setitem(__import__("sys").modules, "uvicorn", None)  # as if not installed
    with pytest.raises(UserError, match=r"needs uvicorn; install them with: pip install 'prefdiff\[feedback\]'"):
        _app(folder)
