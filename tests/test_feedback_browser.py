"""A real browser on the labeling page: headless Chromium labels by clicks and keys and undoes one; keys
with modifiers or on a focused button answer nothing; a page from another origin cannot write; a tab
refused with 409 moves on; two labelers at once never label one pair twice."""

import http.server
import shutil
import threading

import httpx
import pytest
import torch

from prefdiff.data import read_pairs
from prefdiff.feedback.app import TOKEN_HEADER, create_app
from prefdiff.feedback.candidates import CandidatePool, write_sample_folder
from prefdiff.feedback.demo import ThreadedServer
from prefdiff.feedback.store import LabelStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
ENABLE = ("needs a headless Chromium and its driver: on Debian/Ubuntu run "
          "`apt-get install chromium chromium-driver` (CI's .ci/run does this as root)")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1280,1000")


@pytest.fixture
def browser():
    from selenium import webdriver  # a Python dependency (prefdiff[test]): missing it is an error, not a skip

    if CHROMIUM is None or DRIVER is None:  # system packages: skip, naming the install
        pytest.skip(ENABLE)
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def folder(tmp_path):
    write_sample_folder(tmp_path, torch.rand(4, 3, 3, 8, 8) * 2 - 1, [torch.tensor(i) for i in range(4)])
    return tmp_path


def _app(folder, **options):
    pair_file = folder / "pairs.jsonl"
    return create_app(CandidatePool(folder, pair_file), LabelStore(pair_file), drawer=None, **options)


class Tab:
    """One browser tab on the labeling page, as one labeler."""

    def __init__(self, browser, url, labeler, new=False):
        from selenium.webdriver.support.ui import WebDriverWait

        self.browser = browser
        if new:
            browser.switch_to.new_window("tab")
        self.handle = browser.current_window_handle
        browser.get(f"{url}/?labeler={labeler}")
        self.wait = WebDriverWait(browser, 20)
        self.wait.until(lambda d: self.attr("data-pair") is not None and not self.attr("data-busy"))

    def focus(self):
        self.browser.switch_to.window(self.handle)
        return self

    def attr(self, name):
        from selenium.webdriver.common.by import By

        return self.browser.find_element(By.TAG_NAME, "body").get_attribute(name)

    def text(self, element_id):
        from selenium.webdriver.common.by import By

        return self.browser.find_element(By.ID, element_id).text

    def pair(self):
        return self.attr("data-pair")

    def winner(self, side):
        """The stored winner ('a', 'b', 'tie') that answering ``side`` of the pair on screen records."""
        left = self.attr("data-left")
        return {"left": left, "right": "b" if left == "a" else "a", "tie": "tie"}[side]

    def press(self, *keys):
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.browser).send_keys(*keys).perform()

    def chord(self, modifier, key):
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.browser).key_down(modifier).send_keys(key).key_up(modifier).perform()

    def click(self, element_id):
        from selenium.webdriver.common.by import By

        self.browser.find_element(By.ID, element_id).click()

    def wait_moved_from(self, pair):
        """Wait until the page shows another pair (or none) and is idle."""
        self.wait.until(lambda d: self.pair() != pair and not self.attr("data-busy"))


def test_label_ten_pairs_by_clicks_and_keys_then_undo_one(browser, folder):
    from selenium.webdriver.common.keys import Keys

    # (how, what): a button to click or a key to press, and the side it means.
    actions = [("click", "left"), ("key", Keys.ARROW_RIGHT), ("click", "tie"), ("key", Keys.ARROW_LEFT),
               ("click", "right"), ("key", Keys.ARROW_DOWN), ("key", "1"), ("click", "left"),
               ("key", "2"), ("click", "right")]
    sides = {Keys.ARROW_LEFT: "left", Keys.ARROW_RIGHT: "right", Keys.ARROW_DOWN: "tie", "1": "left", "2": "right"}
    expected = []
    app = _app(folder, labels_per_pair=1, instructions="Pick the **less noisy** sample.")
    with ThreadedServer(app) as server:
        tab = Tab(browser, server.url, "ann")
        assert tab.text("instructions") == "Pick the less noisy sample."
        for how, what in actions:
            pair = tab.pair()
            side = what if how == "click" else sides[what]
            expected.append((pair, tab.winner(side)))
            if how == "click":
                tab.click(what)
            else:
                tab.press(what)
            tab.wait_moved_from(pair)
            assert tab.text("toast") == f"saved: {side}"  # each choice is confirmed on screen
        assert "10 answered, 2 left" in tab.text("progress")
        shown = tab.pair()
        # As if the server restarted since the page loaded: the page gets a new token by itself.
        browser.execute_script("token = 'from.an-earlier-server'")
        tab.press("u")  # undo the tenth answer
        tab.wait.until(lambda d: tab.pair() == expected[-1][0] and not tab.attr("data-busy"))
        assert "9 answered, 3 left" in tab.text("progress") and tab.text("toast") == "undone"
        assert tab.text("message") == ""
        assert shown != expected[-1][0]
        # The condition and both samples are drawn (PNG from /files) at 384 px, not broken images.
        tab.wait.until(lambda d: d.execute_script(
            "return [...document.images].slice(0, 3).every(i => i.complete && i.naturalWidth > 0)"))
        assert browser.execute_script("return document.getElementById('left-img').width") == 384
        # A click on an image enlarges it; Escape closes it.
        tab.click("left-img")
        assert browser.execute_script("const z = document.getElementById('zoom'); return !z.hidden && "
                                      "z.querySelector('img').src === document.getElementById('left-img').src")
        assert browser.execute_script("return document.getElementById('zoom-img').width") > 384
        tab.press(Keys.ESCAPE)
        assert browser.execute_script("return document.getElementById('zoom').hidden")
    records = read_pairs(folder / "pairs.jsonl")
    assert [(r["id"], r["winner"]) for r in records] == expected[:9]
    assert {r["labeler"] for r in records} == {"ann"}
    assert len({pair for pair, _ in expected}) == 10  # no pair was shown twice


def test_keys_with_modifiers_or_on_a_focused_button_answer_nothing(browser, folder):
    from selenium.webdriver.common.keys import Keys

    with ThreadedServer(_app(folder)) as server:
        tab = Tab(browser, server.url, "ann")
        first = tab.pair()
        tab.chord(Keys.CONTROL, "s")  # the browser's Save, not a skip
        tab.chord(Keys.CONTROL, "1")  # the browser's first tab, not "left"
        expected = [(first, tab.winner("left"))]
        tab.click("left")
        tab.wait_moved_from(first)
        second = tab.pair()
        tab.press(Keys.ENTER)  # on the button just clicked: must not answer the next pair "left" too
        tab.press(Keys.SPACE)
        expected.append((second, tab.winner("right")))
        tab.press("2")  # a plain key still answers, and shows the Enter did not
        tab.wait_moved_from(second)
        third = tab.pair()
        tab.chord(Keys.ALT, Keys.ARROW_LEFT)  # the browser's Back, not "left"
        tab.chord(Keys.META, Keys.ARROW_RIGHT)
        browser.execute_script("return new Promise(done => setTimeout(done, 500))")
        assert browser.current_url.startswith(server.url) and tab.pair() == third
    assert [(r["id"], r["winner"]) for r in read_pairs(folder / "pairs.jsonl")] == expected
    assert not (folder / "pairs.skips.jsonl").exists()


ATTACK = """<!doctype html><html><body>
<iframe name="sink" id="sink"></iframe>
<form id="form" method="post" action="TARGET/api/answer" enctype="text/plain" target="sink">
<input name='{"pair": "PAIR", "labeler": "mallory", "answer": "a", "x": "' value='"}'></form>
<script>
const target = "TARGET", pair = "PAIR";
const plain = {"Content-Type": "text/plain"};
const forged = JSON.stringify({pair: pair, labeler: "mallory", answer: "a"});
const tries = [
  fetch(target + "/api/answer", {method: "POST", mode: "no-cors", headers: plain, body: forged}),
  fetch(target + "/api/undo", {method: "POST", mode: "no-cors", headers: plain,
                               body: JSON.stringify({labeler: "ann"})}),
  fetch(target + "/api/answer", {method: "POST", headers: {"Content-Type": "application/json"}, body: forged}),
  fetch(target + "/api/token").then(r => r.json()),
];
Promise.allSettled(tries).then(results => {
  document.getElementById("sink").onload = () => {
    document.title = "tried: " + results.map(r => r.status).join(",");
  };
  document.getElementById("form").submit();
});
</script></body></html>"""


def test_a_page_from_another_origin_can_neither_write_nor_undo(browser, folder):
    pair_file = folder / "pairs.jsonl"
    with ThreadedServer(_app(folder)) as server:
        with httpx.Client(base_url=server.url) as c:  # ann's answer, which a forged undo would remove
            c.headers[TOKEN_HEADER] = c.get("/api/token").json()["token"]
            pair = c.get("/api/next", params={"labeler": "ann"}).json()["pair"]["id"]
            c.post("/api/answer", json={"pair": pair, "labeler": "ann", "answer": "b"}).raise_for_status()
        before = pair_file.read_bytes()
        page = ATTACK.replace("TARGET", server.url).replace("PAIR", pair).encode()

        class Attacker(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):
                pass

        other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
        threading.Thread(target=other.serve_forever, daemon=True).start()
        try:
            from selenium.webdriver.support.ui import WebDriverWait

            browser.get(f"http://127.0.0.1:{other.server_address[1]}/")
            WebDriverWait(browser, 20).until(lambda d: d.title.startswith("tried"))
        finally:
            other.shutdown()
            other.server_close()
    # The no-cors posts went out but were refused; the CORS ones never got past the preflight,
    # and the token is not readable from there.
    assert browser.title == "tried: fulfilled,fulfilled,rejected,rejected"
    assert pair_file.read_bytes() == before
    assert [(r["id"], r["labeler"]) for r in read_pairs(pair_file)] == [(pair, "ann")]


def test_a_tab_refused_with_409_moves_on_without_a_reload(browser, folder):
    with ThreadedServer(_app(folder)) as server:
        first_tab = Tab(browser, server.url, "ann")
        second_tab = Tab(browser, server.url, "ann", new=True)
        pair = second_tab.pair()
        assert pair == first_tab.focus().pair()  # the same labeler sees the pair they hold in both
        first_tab.press("1")
        first_tab.wait_moved_from(pair)
        second_tab.focus()
        browser.execute_script("window.notReloaded = true")
        second_tab.press("2")
        second_tab.wait_moved_from(pair)
        assert browser.execute_script("return window.notReloaded === true")
        assert "already answered" in second_tab.text("message")
        assert second_tab.pair() == first_tab.focus().pair()  # both moved on to ann's next pair
    assert [(r["id"], r["labeler"]) for r in read_pairs(folder / "pairs.jsonl")] == [(pair, "ann")]


def test_two_labelers_at_once_with_one_label_per_pair_never_label_a_pair_twice(browser, folder):
    with ThreadedServer(_app(folder, labels_per_pair=1)) as server:
        tabs = [Tab(browser, server.url, "ann"), Tab(browser, server.url, "bob", new=True)]
        while True:
            shown = [tab.focus().pair() for tab in tabs]
            if shown == ["", ""]:
                break
            assert shown[0] != shown[1] or not shown[0], shown
            for tab, pair in zip(tabs, shown):  # in lockstep: each answers what they were shown
                if pair:
                    tab.focus().press("1")
                    tab.wait_moved_from(pair)
    records = read_pairs(folder / "pairs.jsonl")
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 12
    assert {r["labeler"] for r in records} == {"ann", "bob"}

