"""The web chat page at `/` in a real headless Chromium (Selenium): key, streamed answer, tok/s, stop, history.

CI installs Debian's chromium and chromium-driver (.ci/run); without them the test skips, naming them.
"""
from __future__ import annotations

import shutil
import time

import pytest

from tests.support.serve import start_server

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium and chromedriver are absent: "
                                "apt-get install chromium chromium-driver (.ci/run does)")


@pytest.fixture(scope="module")
def server(slow_bundle, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-page")
    (tmp / "key").write_text("page-key\n")
    s = start_server(slow_bundle, tmp / "server.log", "--threads", "1", "--api-key-file", str(tmp / "key"),
                     "--max-tokens", "300", api_key="page-key")
    yield s
    s.stop()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(what, check, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_page_streams_an_answer_shows_speed_stops_and_keeps_the_history(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    el = lambda css: browser.find_element(By.CSS_SELECTOR, css)  # noqa: E731
    browser.get(server.url + "/")
    wait_for("the key error", lambda: "API key" in el("#model").text)
    el("#key").send_keys("page-key", Keys.TAB)  # change event: the page retries /v1/models with the key
    wait_for("the model name", lambda: el("#model").text == "slow-random-llama")

    el("#prompt").send_keys("Tell me a long story", Keys.ENTER)
    first = wait_for("streamed text", lambda: el(".assistant").text)
    wait_for("more streamed text", lambda: len(el(".assistant").text) > len(first) + 5)
    assert wait_for("live speed", lambda: el("#speed").text).endswith(" tok/s")
    assert el("#send").get_attribute("disabled") and not el("#stop").get_attribute("disabled")
    el("#stop").click()
    stopped = wait_for("the stopped answer", lambda: el(".assistant").text.endswith("[stopped]") and el(".assistant").text)
    assert not el("#send").get_attribute("disabled") and el("#stop").get_attribute("disabled")
    m = wait_for("the engine to stop", lambda: (m := server.metrics())["edge_llm_requests_running"] == 0 and m, 30)
    assert 0 < m["edge_llm_completion_tokens_total"] < 300, f"stop did not stop the engine: {m}"
    assert el(".user").text == "Tell me a long story" and len(stopped) > len(first), (stopped, first)

    el("#prompt").send_keys("And then?", Keys.ENTER)  # the next request carries the history: its prompt is cached
    wait_for("the second answer", lambda: len(browser.find_elements(By.CSS_SELECTOR, ".assistant")) == 2
             and not el("#send").get_attribute("disabled"), timeout=120)
    after = server.metrics()
    assert after["edge_llm_prompt_cached_tokens_total"] - m["edge_llm_prompt_cached_tokens_total"] > 10
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".user")] == ["Tell me a long story", "And then?"]


WHOLE = """
const box = (el) => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
const inside = (el) => { const [l, t, r, b] = box(el); return l >= 0 && t >= 0 && r <= innerWidth && b <= innerHeight
  && r > l && b > t && document.elementFromPoint((l + r) / 2, (t + b) / 2) === el; };
return {width: innerWidth, scroll: document.documentElement.scrollWidth,
        whole: Object.fromEntries(arguments[0].map((css) => [css, inside(document.querySelector(css))])),
        header: box(document.querySelector("header"))};
"""


def test_page_on_a_390px_phone_shows_header_key_field_and_new_chat_whole(server, browser):
    from selenium.webdriver.common.by import By

    # a phone's viewport (iPhone 12-15: 390 x 844 CSS pixels), not a desktop window made narrow
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True})
    browser.get(server.url + "/")
    wait_for("the key error", lambda: "API key" in browser.find_element(By.ID, "model").text)
    seen = browser.execute_script(WHOLE, ["#key", "#reset", "header strong"])
    assert seen["width"] == 390 and seen["scroll"] <= 390, seen  # nothing wider than the screen
    assert seen["whole"] == {"#key": True, "#reset": True, "header strong": True}, seen
    left, top, right, bottom = seen["header"]
    assert left >= 0 and right <= 390 and bottom < 844 / 3, seen  # the header stays a header
    icon = browser.find_element(By.CSS_SELECTOR, "link[rel=icon]").get_attribute("href")
    assert icon.startswith("data:image/svg+xml,")  # no request for /favicon.ico (a 404 in the console)


def test_sampling_controls_start_at_the_servers_defaults_and_a_cut_answer_says_length(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from tests.support.serve import http

    el = lambda css: browser.find_element(By.CSS_SELECTOR, css)  # noqa: E731
    browser.get(server.url + "/")
    el("#key").send_keys("page-key", Keys.TAB)
    wait_for("the model name", lambda: el("#model").text == "slow-random-llama")
    status, models = http(server.url + "/v1/models", headers={"Authorization": "Bearer page-key"})
    defaults = models["data"][0]["sampling_defaults"]
    assert status == 200 and defaults["max_tokens"] == 300  # the server's --max-tokens
    shown = {name: float(el(f"#{name}").get_attribute("value")) for name in ("temperature", "top_p", "max_tokens")}
    assert shown == {name: defaults[name] for name in shown}

    el("#sampling summary").click()
    el("#max_tokens").clear()
    el("#max_tokens").send_keys("5")
    assert el("#sampling-shown").text.endswith("5 tokens)")
    before = server.metrics()["edge_llm_completion_tokens_total"]
    el("#prompt").send_keys("Tell me a long story", Keys.ENTER)
    answer = wait_for("the cut answer", lambda: not el("#send").get_attribute("disabled") and el(".assistant").text)
    assert answer.endswith(" [length]") and len(answer) > len(" [length]"), answer
    assert server.metrics()["edge_llm_completion_tokens_total"] - before == 5  # the page sent max_tokens 5
