"""The labeling app's API: the next pair, answers, undo, progress, bad and foreign requests, limits,
labelers at once."""

import asyncio
import errno
import json
import os
import re
import threading

import httpx
import pytest
import torch

from prefdiff import durable
from prefdiff.data import read_pairs
from prefdiff.feedback.app import MAX_BODY, TOKEN_HEADER, create_app, left_side, render_markdown
from prefdiff.feedback.candidates import CandidatePool, write_sample_folder
from prefdiff.feedback.demo import ThreadedServer
from prefdiff.feedback.store import LabelStore

JSON = {"content-type": "application/json"}


@pytest.fixture
def folder(tmp_path):
    write_sample_folder(tmp_path / "samples_dir", torch.rand(4, 3, 3, 8, 8) * 2 - 1,
                        [torch.tensor(i) for i in range(4)])
    (tmp_path / "secret.safetensors").write_bytes(b"outside the sample folder")
    return tmp_path / "samples_dir"


def _app(folder, **options):
    pair_file = folder / "pairs.jsonl"
    return create_app(CandidatePool(folder, pair_file), LabelStore(pair_file), **options)


def _client(app):
    """A test client sending the token the page would send."""
    from starlette.testclient import TestClient

    client = TestClient(app)
    client.headers[TOKEN_HEADER] = client.get("/api/token").json()["token"]
    return client


@pytest.fixture
def client(folder):
    with _client(_app(folder, labels_per_pair=1)) as c:
        yield c


def _files(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


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
    def answer(headers=None, **fields):
        return "post", "/api/answer", {"json": {"pair": pair_id, "labeler": "ann", "answer": "a", **fields},
                                       "headers": headers}

    def fresh(headers=None, **fields):  # an answer that would be written but for what the case changes
        return answer(headers, labeler="bob", **fields)

    def raw(url, content, headers=JSON):
        return "post", url, {"content": content, "headers": headers}

    def get(url, **kwargs):
        return "get", url, kwargs

    bob = json.dumps({"pair": pair_id, "labeler": "bob", "answer": "a"}).encode()
    return {
        "unknown pair id": (404, "unknown pair id", answer(pair="c999999-0-1")),
        "body not JSON": (400, "JSON object", raw("/api/answer", b"left please")),
        "body a JSON list": (400, "JSON object", ("post", "/api/answer", {"json": [pair_id, "a"]})),
        "body nested too deep": (400, "JSON object", raw("/api/answer", b"[" * 20_000 + b"]" * 20_000)),
        "body over 64 KiB": (413, f"at most {MAX_BODY} bytes", fresh(pad="x" * 5_000_000)),
        "no answer": (400, "answer must be one of",
                      ("post", "/api/answer", {"json": {"pair": pair_id, "labeler": "ann"}})),
        "bad answer": (400, "answer must be one of", answer(answer="left")),
        "pair not a string": (400, "pair id string", answer(pair=3)),
        "bad labeler": (400, "labeler must be", answer(labeler="<script>")),
        "labeler missing": (400, "labeler must be",
                            ("post", "/api/answer", {"json": {"pair": pair_id, "answer": "a"}})),
        "answered twice": (409, "already answered", answer(answer="b")),
        "pair has its label": (409, "already has its 1 label", fresh()),
        "undo bad body": (400, "JSON object", raw("/api/undo", b"{")),
        "undo nothing": (409, "no answer to undo", ("post", "/api/undo", {"json": {"labeler": "zed"}})),
        # What another web page in the labeler's browser could send.
        "text/plain body": (415, "application/json", raw("/api/answer", bob, {"content-type": "text/plain"})),
        "form body": (415, "application/json", raw("/api/answer", f"pair={pair_id}&labeler=bob&answer=a".encode(),
                                                    {"content-type": "application/x-www-form-urlencoded"})),
        "no content type": (415, "application/json", raw("/api/answer", bob, {})),
        "foreign origin": (403, "requests from the page at http://127.0.0.1:9999", fresh(
            {"origin": "http://127.0.0.1:9999"})),
        "opaque origin": (403, "requests from the page at null", fresh({"origin": "null"})),
        "undo from a foreign origin": (403, "are refused", ("post", "/api/undo", {
            "json": {"labeler": "ann"}, "headers": {"origin": "http://evil.example"}})),
        "no token": (403, f"missing or stale {TOKEN_HEADER}", fresh({TOKEN_HEADER: ""})),
        "forged token": (403, f"missing or stale {TOKEN_HEADER}", fresh({TOKEN_HEADER: "00.11"})),
        "rebound host name": (403, "is not this server's address", fresh({"host": "attacker.example"})),
        "host on another port": (403, "is not this server's address", fresh({"host": "testserver:8080"})),
        "next from another site": (403, "other sites", get("/api/next", params={"labeler": "bob"}, headers={
            "sec-fetch-site": "same-site", "sec-fetch-mode": "cors"})),
        "next bad labeler": (400, "labeler must be", get("/api/next", params={"labeler": ""})),
        "path outside folder": (403, "outside the sample folder", get("/files/%2e%2e/secret.safetensors")),
        "absolute path": (403, "outside the sample folder", get("/files//etc/passwd")),
        "deep traversal": (403, "outside the sample folder",
                           get("/files/samples/%2e%2e/%2e%2e/%2e%2e/etc/hostname")),
        "null byte in path": (400, "bad path", get("/files/samples/c000000_0%00.safetensors")),
        "not a sample file": (404, "no sample or condition file", get("/files/pairs.jsonl")),
        "missing file": (404, "no sample or condition file", get("/files/samples/nope_0.safetensors")),
        "GET on answer": (405, "Method Not Allowed", get("/api/answer")),
    }


@pytest.mark.parametrize("case", list(_bad_requests("x")))
def test_bad_request_is_4xx_with_message_and_changes_nothing(client, folder, case):
    pair = client.get("/api/next", params={"labeler": "ann"}).json()["pair"]
    client.post("/api/answer", json={"pair": pair["id"], "labeler": "ann", "answer": "a"}).raise_for_status()
    files = _files(folder)
    status, message, (method, url, kwargs) = _bad_requests(pair["id"])[case]
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert _files(folder) == files


def test_the_page_carries_a_working_token_may_be_linked_to_but_not_framed(client):
    page = client.get("/", params={"labeler": "ann"}, headers={"sec-fetch-site": "cross-site",
                                                               "sec-fetch-mode": "navigate"})
    assert page.status_code == 200
    assert page.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in page.headers[
        "content-security-policy"]
    token = re.search(r'let token = "([^"]+)"', page.text)[1]
    pair = client.get("/api/next", params={"labeler": "ann"}).json()["pair"]
    response = client.post("/api/answer", json={"pair": pair["id"], "labeler": "ann", "answer": "a"},
                           headers={TOKEN_HEADER: token})
    assert response.status_code == 200
    # A name that is not a labeler is refused, and not echoed as markup.
    bad = client.get("/", params={"labeler": "<img src=x onerror=alert(1)>"})
    assert bad.status_code == 400 and "<img" not in bad.text and "&lt;img" in bad.text


def test_a_token_of_an_earlier_server_is_refused_and_a_new_one_works(folder):
    with _client(_app(folder)) as before, _client(_app(folder)) as after:
        pair = after.get("/api/next", params={"labeler": "ann"}).json()["pair"]
        body = {"pair": pair["id"], "labeler": "ann", "answer": "a"}
        stale = after.post("/api/answer", json=body, headers={TOKEN_HEADER: before.headers[TOKEN_HEADER]})
        assert stale.status_code == 403 and "reload the page" in stale.json()["error"]
        assert after.post("/api/answer", json=body).status_code == 200


def test_any_local_name_of_the_bound_port_is_accepted_and_no_other(folder):
    with ThreadedServer(_app(folder)) as server, httpx.Client(base_url=server.url) as c:
        port = server.port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
            assert c.get("/api/stats", headers={"host": host}).status_code == 200, host
        for host in (f"attacker.example:{port}", "localhost:1", "localhost", f"127.0.0.2:{port}", ""):
            response = c.get("/api/stats", headers={"host": host})
            assert response.status_code == 403 and f"open http://127.0.0.1:{port}/" in response.json()["error"]


def _post_in_chunks(app, token, *, chunks, length):
    """POST ``chunks`` x 16 KiB straight to the ASGI app; returns (status, chunks it read)."""
    read, sent = 0, []
    headers = [(b"host", b"testserver"), (b"content-type", b"application/json"),
               (TOKEN_HEADER.lower().encode(), token.encode())]
    if length:
        headers.append((b"content-length", str(chunks * 16384).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/api/answer", "raw_path": b"/api/answer", "query_string": b"",
             "root_path": "", "headers": headers, "server": ("testserver", 80), "client": ("127.0.0.1", 1)}

    async def receive():
        nonlocal read
        read += 1
        if read > chunks:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": b" " * 16384, "more_body": read < chunks}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], read


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
def test_a_big_body_is_refused_before_it_is_read_whole(folder, length):
    app = _app(folder)
    with _client(app) as c:
        token = c.headers[TOKEN_HEADER]
    status, read = _post_in_chunks(app, token, chunks=320, length=length)  # 5 MiB
    assert status == 413
    assert read == 0 if length else read <= MAX_BODY // 16384 + 1


def test_labelers_in_lockstep_get_different_pairs_when_one_label_is_wanted(folder):
    with _client(_app(folder, labels_per_pair=1)) as c:
        while True:
            ann, bob = (c.get("/api/next", params={"labeler": who}).json()["pair"] for who in ("ann", "bob"))
            if ann is None and bob is None:
                break
            assert ann is None or bob is None or ann["id"] != bob["id"]
            for who, pair in (("ann", ann), ("bob", bob)):
                if pair is not None:
                    c.post("/api/answer", json={"pair": pair["id"], "labeler": who,
                                                "answer": "a"}).raise_for_status()
    ids = [r["id"] for r in read_pairs(folder / "pairs.jsonl")]
    assert sorted(ids) == sorted(CandidatePool(folder, folder / "pairs.jsonl").pairs)  # each pair once


def test_a_pair_takes_no_more_answers_than_labels_per_pair(folder):
    with _client(_app(folder, labels_per_pair=2)) as c:
        pair = c.get("/api/next", params={"labeler": "ann"}).json()["pair"]["id"]
        for who in ("ann", "bob"):
            c.post("/api/answer", json={"pair": pair, "labeler": who, "answer": "a"}).raise_for_status()
        before = (folder / "pairs.jsonl").read_bytes()
        third = c.post("/api/answer", json={"pair": pair, "labeler": "carl", "answer": "b"})
        assert third.status_code == 409 and "already has its 2 label(s)" in third.json()["error"]
        assert (folder / "pairs.jsonl").read_bytes() == before
        asked = set()
        while (nxt := c.get("/api/next", params={"labeler": "carl"}).json()["pair"]) is not None:
            asked.add(nxt["id"])
            c.post("/api/answer", json={"pair": nxt["id"], "labeler": "carl", "answer": "skip"})
        assert pair not in asked and len(asked) == 11


def test_an_answer_after_a_torn_last_line_is_kept_and_not_asked_again(client, folder):
    (folder / "pairs.jsonl").write_bytes(b'{"a": "samples/c000001_0.safetensors", "condition": "co')
    pair = client.get("/api/next", params={"labeler": "ann"}).json()["pair"]
    client.post("/api/answer", json={"pair": pair["id"], "labeler": "ann", "answer": "a"}).raise_for_status()
    assert client.get("/api/next", params={"labeler": "ann"}).json()["pair"]["id"] != pair["id"]
    assert [(r["id"], r["labeler"]) for r in read_pairs(folder / "pairs.jsonl")] == [(pair["id"], "ann")]


def test_a_full_disk_is_a_json_error_and_the_pair_file_is_unchanged(client, folder, monkeypatch):
    pair = client.get("/api/next", params={"labeler": "ann"}).json()["pair"]
    client.post("/api/answer", json={"pair": pair["id"], "labeler": "ann", "answer": "a"}).raise_for_status()
    before = (folder / "pairs.jsonl").read_bytes()
    real_write = os.write

    def full(fd, data):
        if data.startswith(b'{"a"'):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(durable.os, "write", full)
    nxt = client.get("/api/next", params={"labeler": "ann"}).json()["pair"]
    response = client.post("/api/answer", json={"pair": nxt["id"], "labeler": "ann", "answer": "b"})
    assert response.status_code == 500
    assert "No space left on device" in response.json()["error"] and "free disk space" in response.json()["error"]
    assert (folder / "pairs.jsonl").read_bytes() == before


def test_instructions_are_markdown_shown_above_the_pair_without_raw_html(folder):
    text = "Pick the **sharper** sample.\nLook at *edges*, not `colour`.\n\n- ties are fine\n- <b>skip</b> if unsure"
    with _client(_app(folder, instructions=text)) as c:
        page = c.get("/").text
    assert ('<section id="instructions"><p>Pick the <strong>sharper</strong> sample. Look at <em>edges</em>, '
            'not <code>colour</code>.</p>\n<ul><li>ties are fine</li><li>&lt;b&gt;skip&lt;/b&gt; if unsure</li>'
            '</ul></section>') in page


def test_markdown_subset():
    assert render_markdown("") == ""
    assert render_markdown("one\ntwo\n\nthree") == "<p>one two</p>\n<p>three</p>"
    assert render_markdown("intro\n- a\n- b **c**\nafter") == (
        "<p>intro</p>\n<ul><li>a</li><li>b <strong>c</strong></li></ul>\n<p>after</p>")
    assert render_markdown("`**not bold** <i>`") == "<p><code>**not bold** &lt;i&gt;</code></p>"
    assert render_markdown('<script>alert("x")</script> & *it*') == (
        "<p>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; <em>it</em></p>")


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
            c.headers[TOKEN_HEADER] = c.get("/api/token").json()["token"]
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
