"""The dashboard in a real headless Chromium, against a real gateway process with the real
default models (and, for escaping, the fake llama-server saying hostile things). One
gateway and one browser for the module; each test is one thing a person does."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.e2e.browser import (
    ADMIN_KEY,
    GUEST_KEY,
    MISSING,
    browser_missing,
    chrome,
    fake_config,
    gateway,
    post,
    real_config,
)

pytestmark = [
    pytest.mark.llama,
    pytest.mark.skipif(browser_missing(), reason=MISSING),
    pytest.mark.timeout(300),
]
HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=1">'


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with gateway(real_config(tmp_path_factory.mktemp("dashboard"))) as found:
        yield found


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver = chrome()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def admin(browser: WebDriver, url: str) -> WebDriver:
    """The browser with the admin key in the tab's sessionStorage, as the key form leaves it."""
    browser.get(url + "/ui")
    until(browser, lambda d: d.find_element(By.ID, "who").text != "…" or shown(d, "key-panel"))
    browser.execute_script("sessionStorage.setItem('ai-server-key', arguments[0])", ADMIN_KEY)
    console_errors(browser)  # drained: the page may have asked for a key before it had one
    return browser


def shown(driver: WebDriver, element_id: str) -> bool:
    return bool(driver.find_element(By.ID, element_id).is_displayed())


def until(driver: WebDriver, condition: Callable[[WebDriver], Any], within: float = 60) -> Any:
    # The status tables are redrawn every 2 s: an element read may be replaced meanwhile.
    stale = (StaleElementReferenceException,)
    return WebDriverWait(driver, within, 0.1, ignored_exceptions=stale).until(condition)


def text(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def console_errors(driver: WebDriver, allowed: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """SEVERE console entries since the last call, but the failed requests a test caused
    on purpose (a rejected key: 401, a bad value: 400)."""
    return [
        entry
        for entry in driver.get_log("browser")  # type: ignore[no-untyped-call]
        if entry["level"] == "SEVERE" and not any(a in entry["message"] for a in allowed)
    ]


def log_in(driver: WebDriver, url: str, key: str) -> None:
    driver.get(url + "/ui")
    until(driver, lambda d: d.find_element(By.ID, "key-panel").is_displayed())
    driver.find_element(By.ID, "key-input").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
    until(driver, lambda d: not d.find_element(By.ID, "key-panel").is_displayed())


def test_dashboard_asks_for_a_key_and_says_when_one_is_rejected(
    browser: WebDriver, url: str
) -> None:
    browser.get(url + "/ui")
    until(browser, lambda d: d.find_element(By.ID, "key-panel").is_displayed())
    assert "needs an API key" in text(browser, "#key-message")
    browser.find_element(By.ID, "key-input").send_keys("not-a-key")
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    until(browser, lambda d: "not accepted" in text(d, "#key-message"))
    browser.find_element(By.ID, "key-input").send_keys(ADMIN_KEY)
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    until(browser, lambda d: text(d, "#who") == "operator · admin")
    assert "operator-secret" not in browser.current_url
    assert console_errors(browser, allowed=("401",)) == []


def test_dashboard_status_table_fills_with_models_and_instances(admin: WebDriver, url: str) -> None:
    admin.get(url + "/ui")
    names = until(
        admin,
        lambda d: {
            r.get_attribute("data-model")
            for r in d.find_elements(By.CSS_SELECTOR, "#models tbody tr")
        },
    )
    assert {"smollm2-135m-instruct", "gemma-3-270m"} <= names
    assert text(admin, "#mode") == "server"
    until(admin, lambda d: re.search(r"\b\d{2,}\b", text(d, "#instances tbody")))
    assert "AI Server" in admin.title and " · " in admin.title
    assert console_errors(admin) == []


def test_dashboard_counts_each_clients_requests_by_dialect(admin: WebDriver, url: str) -> None:
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert post(url + "/v1/chat/completions", chat, ADMIN_KEY) == 200
    admin.get(url + "/ui")
    until(admin, lambda d: "operator openai" in text(d, "#dialect-table tbody"))
    assert console_errors(admin) == []


def test_dashboard_chat_streams_into_the_page_with_tokens_per_second(
    admin: WebDriver, url: str
) -> None:
    admin.get(url + "/ui/playground")
    until(admin, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chat-model option")) >= 3)
    Select(admin.find_element(By.ID, "chat-model")).select_by_value("smollm2-135m-instruct")
    # Count each change of the answer's text: a streamed answer arrives in many pieces.
    admin.execute_script(
        "window.pieces = 0; new MutationObserver((changes) => { window.pieces += changes.length })"
        ".observe(document.getElementById('chat-log'), {childList: true, subtree: true,"
        " characterData: true});"
    )
    admin.find_element(By.ID, "chat-input").send_keys("Write three sentences about Paris.")
    admin.find_element(By.ID, "chat-send").click()
    until(admin, lambda d: d.find_element(By.ID, "chat-send").is_enabled(), within=120)
    answer = text(admin, "#chat-log .msg.assistant")
    assert answer.strip()
    assert admin.execute_script("return window.pieces") > 5
    assert re.fullmatch(r"\d+(\.\d)? tokens/s", text(admin, "#chat-speed"))
    assert re.fullmatch(r"TTFT \d+ ms", text(admin, "#chat-ttft"))
    assert re.fullmatch(r"\d+ tokens", text(admin, "#chat-tokens"))
    assert text(admin, "#chat-error") == ""
    assert console_errors(admin) == []


def test_dashboard_chat_stop_ends_the_answer_and_embeddings_compare(
    admin: WebDriver, url: str
) -> None:
    admin.get(url + "/ui/playground")
    until(admin, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chat-model option")) >= 3)
    admin.find_element(By.ID, "chat-clear").click()
    max_tokens = admin.find_element(By.ID, "chat-max")
    max_tokens.clear()
    max_tokens.send_keys("2000")
    admin.find_element(By.ID, "chat-input").send_keys("Tell me a very long story about a ship.")
    admin.find_element(By.ID, "chat-send").click()
    until(admin, lambda d: text(d, "#chat-log .msg.assistant").strip(), within=120)
    admin.find_element(By.ID, "chat-stop").click()
    until(admin, lambda d: text(d, "#chat-log .msg.error") == "stopped")
    assert admin.find_element(By.ID, "chat-send").is_enabled()
    admin.find_element(By.ID, "embed-go").click()
    until(admin, lambda d: text(d, "#embed-dims") == "640")
    assert 0 < float(text(admin, "#embed-cos")) <= 1
    assert console_errors(admin) == []


def test_dashboard_image_upload_previews_and_returns_tags(
    admin: WebDriver, url: str, tmp_path: Path
) -> None:
    picture = tmp_path / "red.png"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, "PNG")
    picture.write_bytes(buffer.getvalue())
    admin.get(url + "/ui/playground")
    until(admin, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#image-model option")) >= 3)
    admin.find_element(By.ID, "image-file").send_keys(str(picture))
    preview = admin.find_element(By.ID, "image-preview")
    until(admin, lambda d: preview.is_displayed())
    assert str(preview.get_attribute("src")).startswith("blob:")
    admin.find_element(By.ID, "image-tag").click()
    until(admin, lambda d: d.find_elements(By.CSS_SELECTOR, "#image-tags li"), within=120)
    tags = [li.text for li in admin.find_elements(By.CSS_SELECTOR, "#image-tags li")]
    assert tags and all(tag.strip() for tag in tags)
    assert text(admin, "#image-error") == ""
    assert console_errors(admin) == []


def test_dashboard_shows_a_bad_config_value_next_to_its_field(admin: WebDriver, url: str) -> None:
    admin.get(url + "/ui/config")
    field = until(admin, lambda d: d.find_element(By.ID, "f-top_p"))
    assert field.get_attribute("max") == "1"  # the range came from the server
    field.clear()
    field.send_keys("2")
    admin.find_element(By.ID, "apply").click()
    error = admin.find_element(By.ID, "err-llm_params.top_p")
    until(admin, lambda d: "top_p" in error.text)
    box = admin.find_element(By.CSS_SELECTOR, '[data-param="llm_params.top_p"]')
    assert "invalid" in str(box.get_attribute("class"))
    assert text(admin, "#form-error") == ""
    assert console_errors(admin, allowed=("400",)) == []


def test_dashboard_mode_switch_is_confirmed_and_shows_in_the_status(
    admin: WebDriver, url: str
) -> None:
    admin.get(url + "/ui/config")
    until(admin, lambda d: d.find_element(By.ID, "f-backend").get_attribute("value") == "server")
    Select(admin.find_element(By.ID, "f-backend")).select_by_value("cli")
    admin.find_element(By.ID, "apply").click()
    until(admin, lambda d: d.find_element(By.ID, "confirm").is_displayed())
    assert "cli mode" in text(admin, "#confirm-text")
    admin.find_element(By.ID, "confirm-yes").click()
    until(admin, lambda d: "done" in text(d, "#restart-log"), within=90)
    admin.get(url + "/ui")
    until(admin, lambda d: text(d, "#mode") == "cli")
    until(admin, lambda d: d.find_element(By.ID, "instances-empty").is_displayed())
    assert console_errors(admin) == []
    assert post(url + "/api/config", {"backend": "server"}, ADMIN_KEY) == 200


def test_dashboard_streams_a_models_log(admin: WebDriver, url: str) -> None:
    admin.get(url + "/ui/logs?model=gemma-3-270m")
    until(admin, lambda d: "[ai-server] started pid" in text(d, "#log"), within=90)
    assert admin.find_element(By.ID, "log-stop").is_enabled()
    admin.find_element(By.ID, "log-stop").click()
    until(admin, lambda d: text(d, "#log-status") == "stopped")
    assert console_errors(admin) == []


def test_dashboard_unloads_and_loads_a_model_with_its_buttons(admin: WebDriver, url: str) -> None:
    row = '#models tr[data-model="gemma-3-270m"]'
    admin.get(url + "/ui")

    def click_when(label: str) -> None:
        def clicked(d: WebDriver) -> bool:
            try:  # the rows are redrawn every 2 s: a button found may be gone at the click
                button = d.find_element(By.CSS_SELECTOR, f"{row} button")
                if button.text != label or not button.is_enabled():
                    return False
                button.click()
                return True
            except StaleElementReferenceException:
                return False

        until(admin, clicked, within=90)

    click_when("Unload")
    until(admin, lambda d: text(d, f"{row} .badge") == "unloaded", within=90)
    click_when("Load")
    until(admin, lambda d: text(d, f"{row} .badge") == "loaded", within=90)
    assert console_errors(admin) == []


def test_dashboard_guest_sees_the_config_read_only_and_no_logs(
    browser: WebDriver, url: str
) -> None:
    browser.execute_script("sessionStorage.clear()")
    log_in(browser, url, GUEST_KEY)
    assert text(browser, "#who") == "guest"
    browser.get(url + "/ui/config")
    until(browser, lambda d: d.find_element(By.ID, "readonly").is_displayed())
    assert not browser.find_element(By.ID, "f-temp").is_enabled()
    assert not browser.find_element(By.ID, "apply").is_enabled()
    browser.get(url + "/ui/logs")
    until(browser, lambda d: d.find_element(By.ID, "logs-denied").is_displayed())
    assert not browser.find_element(By.ID, "logs-form").is_displayed()
    assert console_errors(browser, allowed=("401",)) == []  # the page before the key


def test_dashboard_every_view_loads_without_console_errors(admin: WebDriver, url: str) -> None:
    console_errors(admin)  # start afresh
    for view in ("", "/playground", "/config", "/logs", "/metrics"):
        admin.get(url + "/ui" + view)
        until(admin, lambda d: d.find_element(By.ID, "who").text not in ("", "…"))
    assert console_errors(admin) == []


def test_dashboard_inserts_model_output_and_log_lines_as_text(
    browser: WebDriver, tmp_path: Path
) -> None:
    behaviour = json.dumps({"answer": HOSTILE, "say": HOSTILE})
    with gateway(fake_config(tmp_path), env={"FAKE_LLAMA": behaviour}, within=60) as fake:
        browser.get(fake + "/ui/playground")
        until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chat-model option")) >= 2)
        browser.find_element(By.ID, "chat-input").send_keys("say something")
        browser.find_element(By.ID, "chat-send").click()
        until(browser, lambda d: "onerror" in text(d, "#chat-log .msg.assistant"))
        assert text(browser, "#chat-log .msg.assistant") == HOSTILE
        browser.get(fake + "/ui/logs?model=stub")
        until(browser, lambda d: HOSTILE in text(d, "#log"), within=30)
        for area in ("#log", "#chat-log", "body"):
            assert not browser.find_elements(By.CSS_SELECTOR, f"{area} img[src='x']")
        assert browser.execute_script("return window.pwned") is None
        assert console_errors(browser) == []
        browser.get("about:blank")  # ends the log stream before the gateway stops


def test_dashboard_playground_shows_a_tool_call_and_executes_nothing(
    browser: WebDriver, tmp_path: Path
) -> None:
    call = {"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    behaviour = json.dumps({"answer": json.dumps(call)})
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
    with gateway(fake_config(tmp_path), env={"FAKE_LLAMA": behaviour}, within=60) as fake:
        browser.get(fake + "/ui/playground")
        until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chat-model option")) >= 2)
        browser.find_element(By.CSS_SELECTOR, "details summary").click()
        browser.find_element(By.ID, "chat-tools").send_keys(json.dumps(tools))
        browser.find_element(By.ID, "chat-input").send_keys("weather in Paris?")
        browser.find_element(By.ID, "chat-send").click()
        until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#chat-log .msg.tool"))
        assert text(browser, "#chat-log .msg.tool") == 'calls get_weather({"city": "Paris"})'
        assert not browser.find_elements(By.CSS_SELECTOR, "#chat-log .msg.assistant")
        assert console_errors(browser) == []


def test_dashboard_shows_why_a_model_failed_with_its_log(
    browser: WebDriver, tmp_path: Path
) -> None:
    crash = json.dumps({"exit_at_start": 3})  # prints "error: failed to load model", exits
    with gateway(fake_config(tmp_path), env={"FAKE_LLAMA": crash}, probe="/health") as broken:
        browser.get(broken + "/ui")
        until(browser, lambda d: "exited with status 3" in text(d, "#failure-list"))
        assert "error: failed to load model" in text(browser, "#failure-list")
        assert console_errors(browser) == []
        browser.get("about:blank")
