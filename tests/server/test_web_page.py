"""The chat page in headless Chromium (Debian's chromium + chromedriver, driven by selenium).

A person's steps: type a message and watch the answer stream in, continue the conversation,
stop a long answer, start a new chat and go back to the old one, switch to Chinese, use it
on a phone-sized screen, give an API key. Answers are checked against the SDK called
directly with the seed and parameters the page sent. The model is the bigram model, paced
(see conftest) so that streaming and stopping can be seen.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from openllm_hub.core.model import Model
from openllm_hub.server import create_app

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parents[2]
KEY = "page-key"


def _ensure_chromium() -> None:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        subprocess.run(["bash", str(REPO / "scripts" / "install_chromium.sh")], check=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    _ensure_chromium()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", "--window-size=1100,800", "--lang=en-US"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def slow(model: Model, paced: Any) -> Any:
    return paced(model, delay=0.02)


@pytest.fixture(scope="module")
def site(slow: Any, server_thread: Any) -> Iterator[Any]:
    with server_thread(create_app(slow, model_id="bigram-stories", max_tokens_limit=400)) as s:
        yield s


def wait_for(driver: WebDriver, script: str, what: str, timeout: float = 30.0) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def open_page(driver: WebDriver, url: str) -> None:
    driver.get(url + "/")
    driver.execute_script("localStorage.clear(); sessionStorage.clear();")
    driver.get(url + "/")
    wait_for(driver, "return document.body.dataset.state === 'idle'", "the page to start")


def set_setting(driver: WebDriver, field: str, value: object) -> None:
    """Set a settings field as typing would (the page listens to input events)."""
    driver.execute_script("const el = document.getElementById(arguments[0]); el.value = arguments[1];"
                          "el.dispatchEvent(new Event('input', {bubbles: true}));", field, str(value))


def send(driver: WebDriver, text: str) -> None:
    box = driver.find_element(By.ID, "input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def idle(driver: WebDriver) -> None:
    wait_for(driver, "return document.body.dataset.state === 'idle'", "the answer to end")


def bubbles(driver: WebDriver) -> list[tuple[str, str]]:
    """(role, text) of each message shown, text exactly as in the DOM."""
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('#messages .msg')).map(e => "
        "[e.classList.contains('user') ? 'user' : e.classList.contains('error') ? 'error' : 'assistant', "
        "e.querySelector('.text').textContent, (e.querySelector('.note') || {}).textContent || '']);")
    return [(r[0], r[1]) for r in rows]


def watch_stream(driver: WebDriver) -> list[str]:
    """Texts of the live answer seen while it streams."""
    seen: list[str] = []
    wait_for(driver, "return document.body.dataset.state === 'generating'", "generation to start")
    while driver.execute_script("return document.body.dataset.state") == "generating":
        text = driver.execute_script(
            "const e = document.querySelector('.msg.streaming .text'); return e ? e.textContent : null;")
        if text:
            seen.append(text)
        time.sleep(0.01)
    return seen


#: Sampling parameters the tests set on the page (on the sliders' 0.05 grid) and give the SDK.
SAMPLING = {"temperature": 0.9, "top_p": 0.9}


def set_sampling(driver: WebDriver, seed: int, max_tokens: int) -> None:
    set_setting(driver, "temperature", SAMPLING["temperature"])
    set_setting(driver, "top-p", SAMPLING["top_p"])
    set_setting(driver, "seed", seed)
    set_setting(driver, "max-tokens", max_tokens)


def test_type_message_and_see_streamed_answer(browser: WebDriver, site: Any, model: Model,
                                              long_answer_seed: Callable[..., int]) -> None:
    open_page(browser, site.url)
    # the page asks /v1/models after it starts: wait for the answer rather than race it
    wait_for(browser, "return document.getElementById('model-name').textContent !== ''", "the model name")
    assert browser.find_element(By.ID, "model-name").text.startswith("bigram-stories")
    first = "Tell me a story, 讲个故事"
    seed = long_answer_seed(model, [{"role": "user", "content": first}], tokens=80, **SAMPLING)
    set_sampling(browser, seed, 80)
    send(browser, first)
    seen = watch_stream(browser)
    want = model.chat([{"role": "user", "content": first}], seed=seed, max_new_tokens=80, **SAMPLING)
    assert bubbles(browser) == [("user", first), ("assistant", want.text)]
    partial = [s for s in seen if s != want.text]
    assert partial and all(want.text.startswith(s) for s in seen), "the answer should grow piece by piece"
    assert f"{want.usage.completion_tokens} tokens" in browser.find_element(By.ID, "status").text

    # the conversation goes on: the page sends the history with the next message
    second = "And then?"
    send(browser, second)
    watch_stream(browser)
    idle(browser)
    history = [{"role": "user", "content": first}, {"role": "assistant", "content": want.text},
               {"role": "user", "content": second}]
    want2 = model.chat(history, seed=seed, max_new_tokens=80, **SAMPLING)
    assert bubbles(browser)[-1] == ("assistant", want2.text)
    titles = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#history li")]
    assert titles == [first]
    # everything the page loaded came from this server
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(site.url + "/") for u in urls), urls


def test_stop_a_long_answer(browser: WebDriver, site: Any, slow: Any, model: Model,
                            long_answer_seed: Callable[..., int], eventually: Callable[..., None]) -> None:
    open_page(browser, site.url)
    message = "Tell me a very long story."
    full = 300
    seed = long_answer_seed(model, [{"role": "user", "content": message}], tokens=full, **SAMPLING)
    set_sampling(browser, seed, full)
    slow.delay = 0.05  # the whole answer would take >= 15 s
    try:
        before = slow.closed_streams
        send(browser, message)
        wait_for(browser, "const e = document.querySelector('.msg.streaming .text'); return e && e.textContent",
                 "the answer to begin")
        assert browser.find_element(By.ID, "send").is_displayed() is False
        browser.find_element(By.ID, "stop").click()
        idle(browser)
        eventually(lambda: slow.closed_streams == before + 1, "the server to stop generating")
        assert slow.tokens_per_stream[-1] < full
    finally:
        slow.delay = 0.02
    whole = model.chat([{"role": "user", "content": message}], seed=seed, max_new_tokens=full, **SAMPLING)
    role, shown = bubbles(browser)[-1]
    assert role == "assistant" and whole.text.startswith(shown) and len(shown) < len(whole.text)
    note = browser.find_element(By.CSS_SELECTOR, "#messages .msg.assistant .note").text
    assert note == "stopped"
    assert browser.find_element(By.ID, "send").is_displayed() and not browser.find_element(By.ID, "stop").is_displayed()
    time.sleep(0.3)
    assert bubbles(browser)[-1] == ("assistant", shown), "nothing may arrive after Stop"


def test_new_chat_and_history(browser: WebDriver, site: Any, model: Model) -> None:
    open_page(browser, site.url)
    set_sampling(browser, 5, 30)
    send(browser, "First chat")
    idle(browser)
    old = bubbles(browser)
    browser.find_element(By.ID, "new-chat").click()
    assert bubbles(browser) == []
    assert browser.find_element(By.ID, "empty").is_displayed()
    send(browser, "Second chat")
    idle(browser)
    want = model.chat([{"role": "user", "content": "Second chat"}], seed=5, max_new_tokens=30, **SAMPLING)
    assert bubbles(browser) == [("user", "Second chat"), ("assistant", want.text)], "a new chat starts empty"
    items = browser.find_elements(By.CSS_SELECTOR, "#history li button")
    assert [i.text for i in items] == ["Second chat", "First chat"]
    items[1].click()
    assert bubbles(browser) == old
    # the history survives a reload
    browser.refresh()
    wait_for(browser, "return document.body.dataset.state === 'idle'", "the page to start")
    assert bubbles(browser) == old


def test_chinese_interface_and_phone_screen(browser: WebDriver, site: Any) -> None:
    open_page(browser, site.url)
    browser.find_element(By.ID, "lang").click()
    assert browser.find_element(By.ID, "send").text == "发送"
    assert browser.find_element(By.ID, "new-chat").text == "新对话"
    assert browser.execute_script("return document.documentElement.lang") == "zh-CN"
    browser.refresh()
    wait_for(browser, "return document.body.dataset.state === 'idle'", "the page to start")
    assert browser.find_element(By.ID, "send").text == "发送", "the language choice is remembered"
    try:
        browser.set_window_size(390, 844)
        width = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], "no sideways scrolling on a phone"
        assert browser.find_element(By.ID, "toggle-sidebar").is_displayed()
        wait_for(browser, "return document.getElementById('sidebar').getBoundingClientRect().right <= 0",
                 "the history to become a closed drawer")
        browser.find_element(By.ID, "toggle-sidebar").click()
        wait_for(browser, "return document.getElementById('sidebar').getBoundingClientRect().left >= 0",
                 "the history drawer to open")
        # tap the dimmed area beside the drawer to close it
        ActionChains(browser).move_to_element_with_offset(browser.find_element(By.ID, "scrim"), 170, 0).click() \
            .perform()
        wait_for(browser, "return document.getElementById('sidebar').getBoundingClientRect().right <= 0",
                 "the drawer to close")
        for element in ("input", "send", "toggle-settings"):
            assert browser.find_element(By.ID, element).is_displayed()
        send(browser, "你好")
        idle(browser)
        assert bubbles(browser)[0] == ("user", "你好") and bubbles(browser)[1][0] == "assistant"
    finally:
        browser.set_window_size(1100, 800)
        browser.find_element(By.ID, "lang").click()


def test_api_key_and_errors(browser: WebDriver, model: Model, paced: Any, serve: Callable[..., Any]) -> None:
    faulty = paced(model, fail_after=0)
    srv = serve(create_app(faulty, api_key=KEY))
    open_page(browser, srv.url)
    wait_for(browser, "return document.getElementById('status').textContent.includes('API key')",
             "the page to ask for the key")
    assert browser.find_element(By.ID, "settings").is_displayed()
    field = browser.find_element(By.ID, "api-key")
    field.send_keys(KEY)
    field.send_keys(Keys.TAB)  # 'change' stores the key for this tab and retries
    wait_for(browser, "return document.getElementById('model-name').textContent !== ''", "the model to load")
    send(browser, "Hello")
    idle(browser)
    # the generation failed on the server: the page shows the error and gives the text back
    shown = bubbles(browser)
    assert [r for r, _ in shown] == ["error"] and "injected fault" in shown[0][1]
    assert browser.find_element(By.ID, "input").get_attribute("value") == "Hello"
    faulty.fail_after = None
    browser.find_element(By.ID, "send").click()
    idle(browser)
    assert [r for r, _ in bubbles(browser)][-2:] == ["user", "assistant"]


def test_missing_key_error_goes_once_the_key_works(browser: WebDriver, model: Model,
                                                   serve: Callable[..., Any]) -> None:
    srv = serve(create_app(model, api_key=KEY))
    open_page(browser, srv.url)
    wait_for(browser, "return document.getElementById('status').textContent.includes('API key')",
             "the page to ask for the key")
    send(browser, "Hello")
    idle(browser)
    assert [r for r, _ in bubbles(browser)] == ["error"]
    field = browser.find_element(By.ID, "api-key")
    field.send_keys(KEY)
    field.send_keys(Keys.TAB)
    wait_for(browser, "return document.getElementById('model-name').textContent !== ''", "the model to load")
    # the key works now: the bubble about the missing key is gone
    wait_for(browser, "return document.querySelectorAll('#messages .msg.error').length === 0",
             "the stale error bubble to go")
    browser.find_element(By.ID, "send").click()
    idle(browser)
    assert [r for r, _ in bubbles(browser)] == ["user", "assistant"]


def test_fast_answer_time_and_server_down(browser: WebDriver, model: Model, server_thread: Any) -> None:
    srv = server_thread(create_app(model, model_id="bigram-stories"))
    with srv:
        open_page(browser, srv.url)
        set_sampling(browser, seed=1, max_tokens=8)
        send(browser, "Hi")
        idle(browser)
        status = browser.find_element(By.ID, "status").text
        # an unpaced bigram answer takes milliseconds: the page says so instead of "0.0 s"
        assert re.fullmatch(r"\d+ tokens in (<1 ms|\d+ ms|\d+\.\d+ s)", status), status
        assert "0.0 s" not in status
    # the server is gone: the page says what that means, not only the browser's "Failed to fetch"
    send(browser, "Hello again")
    idle(browser)
    shown = bubbles(browser)
    assert shown[-1][0] == "error" and "Cannot reach the server" in shown[-1][1], shown
    assert "openllm-hub serve" in shown[-1][1]
