"""A real browser on the labeling page: headless Chromium labels ten pairs by clicks and keys, undoes one."""

import shutil

import pytest
import torch

from prefdiff.data import read_pairs
from prefdiff.feedback.app import create_app
from prefdiff.feedback.candidates import CandidatePool, write_sample_folder
from prefdiff.feedback.demo import ThreadedServer
from prefdiff.feedback.store import LabelStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
ENABLE = ("needs a headless Chromium and its driver: on Debian/Ubuntu run "
          "`apt-get install chromium chromium-driver` (CI's .ci/run does this as root), "
          "and `pip install selenium` (in prefdiff[test])")


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason=ENABLE)
    if CHROMIUM is None or DRIVER is None:
        pytest.skip(ENABLE)
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_label_ten_pairs_by_clicks_and_keys_then_undo_one(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    write_sample_folder(tmp_path, torch.rand(4, 3, 3, 8, 8) * 2 - 1, [torch.tensor(i) for i in range(4)])
    pair_file = tmp_path / "pairs.jsonl"
    app = create_app(CandidatePool(tmp_path, pair_file), LabelStore(pair_file), labels_per_pair=1,
                     drawer=None)
    body = lambda: browser.find_element(By.TAG_NAME, "body")  # noqa: E731
    # (how, what): a button to click or a key to press, and the side it means.
    actions = [("click", "left"), ("key", Keys.ARROW_RIGHT), ("click", "tie"), ("key", Keys.ARROW_LEFT),
               ("click", "right"), ("key", Keys.ARROW_DOWN), ("key", "1"), ("click", "left"),
               ("key", "2"), ("click", "right")]
    sides = {Keys.ARROW_LEFT: "left", Keys.ARROW_RIGHT: "right", Keys.ARROW_DOWN: "tie", "1": "left", "2": "right"}
    expected = []
    with ThreadedServer(app) as server:
        browser.get(server.url + "/?labeler=ann")
        wait = WebDriverWait(browser, 20)
        wait.until(lambda d: body().get_attribute("data-pair"))
        for how, what in actions:
            pair, left = body().get_attribute("data-pair"), body().get_attribute("data-left")
            side = what if how == "click" else sides[what]
            winner = {"left": left, "right": "b" if left == "a" else "a", "tie": "tie"}[side]
            expected.append((pair, winner))
            if how == "click":
                browser.find_element(By.ID, what).click()
            else:
                body().send_keys(what)
            wait.until(lambda d: body().get_attribute("data-pair") != pair and not body().get_attribute("data-busy"))
        assert "10 answered, 2 left" in browser.find_element(By.ID, "progress").text
        shown = body().get_attribute("data-pair")
        body().send_keys("u")  # undo the tenth answer
        wait.until(lambda d: body().get_attribute("data-pair") == expected[-1][0]
                   and not body().get_attribute("data-busy"))
        assert "9 answered, 3 left" in browser.find_element(By.ID, "progress").text
        assert browser.find_element(By.ID, "message").text == ""
        assert shown != expected[-1][0]
        # The condition and both samples are drawn (PNG from /files), not broken images.
        wait.until(lambda d: d.execute_script(
            "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"))
    records = read_pairs(pair_file)
    assert [(r["id"], r["winner"]) for r in records] == expected[:9]
    assert {r["labeler"] for r in records} == {"ann"}
    assert len({pair for pair, _ in expected}) == 10  # no pair was shown twice
