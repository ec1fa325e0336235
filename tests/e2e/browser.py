"""A real gateway process and Debian's headless Chromium (driven by selenium), for the
dashboard's browser tests and `make screenshots`. Nothing is downloaded: the browser and its
driver are Debian's matching pair, and selenium is told to stay offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

from tests.conftest import free_port, stop
from tests.helpers import FAKES

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MISSING = (
    "the browser tests need Debian's chromium and chromium-driver: "
    "`apt-get install chromium chromium-driver` (`make test` installs them when run as root)"
)
ADMIN_KEY = "operator-secret"
GUEST_KEY = "guest-secret"


def browser_missing() -> bool:
    return not (CHROMIUM.is_file() and CHROMEDRIVER.is_file())


def chrome(width: int = 1280, height: int = 900) -> WebDriver:
    os.environ["SE_OFFLINE"] = "true"  # selenium never fetches a driver or a browser
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def real_config(directory: Path) -> Path:
    """The real llama.cpp and default models in server mode, with an admin and a guest key."""
    path = directory / "config.toml"
    path.write_text(
        f'port = {free_port()}\nstate_dir = "{directory / "state"}"\n'
        f"[llama_server]\nport = {free_port()}\n"
        f'[ollama]\nlisten = "127.0.0.1:{free_port()}"\n'  # never a real Ollama's 11434
        f'[auth.keys.operator]\nkey = "{ADMIN_KEY}"\nadmin = true\n'
        f'[auth.keys.guest]\nkey = "{GUEST_KEY}"\n'
    )
    return path


def fake_config(directory: Path) -> Path:
    """The fake llama-server (tests/fakes) serving one stub model, no keys."""
    model = directory / "stub.gguf"
    model.write_bytes(b"GGUF")
    path = directory / "config.toml"
    path.write_text(
        f'port = {free_port()}\nstate_dir = "{directory / "state"}"\n'
        f'cache_dir = "{directory / "cache"}"\n'
        f'[models]\nchat = "{model}"\nembedding = "{model}"\n'
        f'vision = "{model}"\nmmproj = "{model}"\n'
        f"[llama_server]\nport = {free_port()}\n"
        f'[ollama]\nlisten = "127.0.0.1:{free_port()}"\n'  # never a real Ollama's 11434
        f'[binaries]\nllama_server = "{FAKES / "fake_llama_server.py"}"\n'
    )
    return path


def _port(config: Path) -> int:
    return int(config.read_text().split("\n", 1)[0].split("=")[1])


def get(url: str, key: str | None = None) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (loopback)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 (loopback)
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def post(url: str, body: object, key: str | None = None) -> int:
    headers = {"Content-Type": "application/json"} | (
        {"Authorization": f"Bearer {key}"} if key else {}
    )
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:  # noqa: S310 (loopback)
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@contextmanager
def gateway(
    config: Path, env: dict[str, str] | None = None, within: float = 180, probe: str = "/ready"
) -> Iterator[str]:
    """`ai-server serve --config` as a process, once `probe` answers 200; its URL."""
    url = f"http://127.0.0.1:{_port(config)}"
    with (config.parent / "gateway.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=os.environ | (env or {}),
        )
        try:
            deadline = time.monotonic() + within
            while True:
                assert process.poll() is None, (config.parent / "gateway.log").read_text()
                try:
                    if get(url + probe, ADMIN_KEY)[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "the gateway did not get ready"
                time.sleep(0.2)
            yield url
        finally:
            stop(process, grace=40)
