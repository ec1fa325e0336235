"""`make screenshots`: the dashboard's main views as docs/*.png, taken by the same headless
Chromium the browser tests use, against a real gateway with the real default models."""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.e2e.browser import ADMIN_KEY, MISSING, browser_missing, chrome, gateway, get, real_config

DOCS = Path(__file__).resolve().parents[2] / "docs"


def wait(driver: WebDriver, css: str, within: float = 120) -> None:
    WebDriverWait(driver, within, poll_frequency=0.2).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, css)
    )


def log_in(driver: WebDriver, url: str) -> None:
    driver.get(url + "/ui")
    wait(driver, "#key-panel:not([hidden])")
    driver.find_element(By.ID, "key-input").send_keys(ADMIN_KEY)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait(driver, "#models tbody tr")
    # Both models loaded, for a settled picture.
    WebDriverWait(driver, 120, poll_frequency=0.2).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#models .badge.loaded")) >= 2
    )


def playground(driver: WebDriver, url: str, work: Path) -> None:
    driver.get(url + "/ui/playground")
    wait(driver, "#chat-model option[value='smollm2-135m-instruct']")
    Select(driver.find_element(By.ID, "chat-model")).select_by_value("smollm2-135m-instruct")
    driver.find_element(By.ID, "chat-input").send_keys("What is the capital of France?")
    driver.find_element(By.ID, "chat-send").click()
    wait(driver, "#chat-send:not([disabled])")
    driver.find_element(By.ID, "embed-go").click()
    picture = work / "sky.png"
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (70, 130, 200)).save(buffer, "PNG")
    picture.write_bytes(buffer.getvalue())
    driver.find_element(By.ID, "image-file").send_keys(str(picture))
    driver.find_element(By.ID, "image-tag").click()
    wait(driver, "#image-tags li")


def main() -> int:
    if browser_missing():
        print(MISSING, file=sys.stderr)
        return 1
    DOCS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, gateway(real_config(Path(tmp))) as url:
        driver = chrome(1280, 860)
        try:
            log_in(driver, url)
            driver.save_screenshot(str(DOCS / "dashboard-status.png"))
            driver.set_window_size(1280, 1320)
            playground(driver, url, Path(tmp))
            driver.execute_script("window.scrollTo(0, 0)")
            driver.save_screenshot(str(DOCS / "dashboard-playground.png"))
            driver.set_window_size(1280, 860)
            driver.get(url + "/ui/config")
            wait(driver, "#f-top_p")
            driver.save_screenshot(str(DOCS / "dashboard-config.png"))
            driver.get(url + "/ui/logs?model=smollm2-135m-instruct")
            wait(driver, "#log div")
            driver.save_screenshot(str(DOCS / "dashboard-logs.png"))
            for _ in range(60):  # a few 10 s samples, for lines rather than dots
                if len(get(url + "/api/metrics/history", ADMIN_KEY)[1]["points"]) >= 4:  # type: ignore[arg-type]
                    break
                time.sleep(1)
            driver.get(url + "/ui/metrics")
            wait(driver, "#metrics-empty[hidden]", within=30)  # the first 10 s sample
            driver.save_screenshot(str(DOCS / "dashboard-metrics.png"))
            driver.set_window_size(390, 844)
            driver.get(url + "/ui")
            wait(driver, "#models tbody tr")
            driver.save_screenshot(str(DOCS / "dashboard-phone.png"))
        finally:
            driver.quit()
    print("wrote", ", ".join(sorted(p.name for p in DOCS.glob("dashboard-*.png"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
