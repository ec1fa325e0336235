"""Debian's Prometheus and blackbox exporter as child processes of a test: the shipped files
in deploy/monitoring, temp dirs, free ports on 127.0.0.1, stopped afterwards whatever
happens. And Prometheus's HTTP API, read the way an operator's tools read it."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.abc

from tests.conftest import free_port

logger = logging.getLogger(__name__)

MONITORING = Path(__file__).parents[2] / "deploy" / "monitoring"
RULES = MONITORING / "ai-server.rules.yml"
RULES_TEST = Path(__file__).parent / "ai-server.rules.test.yml"
PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
BLACKBOX = Path("/usr/bin/prometheus-blackbox-exporter")
MISSING = (
    "the monitoring tests need Debian's prometheus (with promtool) and "
    "prometheus-blackbox-exporter: `apt-get install prometheus prometheus-blackbox-exporter` "
    "(`make test` installs them when run as root, without starting their services)"
)

# What tests/monitoring changes in deploy/monitoring/prometheus.yml: the addresses, and the
# intervals (an alert fires within seconds instead of a minute). The rules are used as shipped.
GATEWAY_ADDRESS = "localhost:8000"
BLACKBOX_ADDRESS = "localhost:9115"
INTERVALS = ("scrape_interval: 15s", "evaluation_interval: 15s")


def stack_missing() -> bool:
    return not all(p.is_file() for p in (PROMETHEUS, PROMTOOL, BLACKBOX))


def prometheus_config(gateway: str, blackbox: str, interval: str) -> str:
    """deploy/monitoring/prometheus.yml pointed at `gateway` and `blackbox` (host:port),
    scraping and evaluating every `interval`."""
    text = (MONITORING / "prometheus.yml").read_text()
    # Three gateway targets (metrics, /health, /ready) and one exporter: a change to the
    # shipped file that this would miss fails here, not silently.
    assert text.count(GATEWAY_ADDRESS) == 3 and text.count(BLACKBOX_ADDRESS) == 1
    text = text.replace(GATEWAY_ADDRESS, gateway).replace(BLACKBOX_ADDRESS, blackbox)
    for setting in INTERVALS:
        assert text.count(setting) == 1
        text = text.replace(setting, setting.replace("15s", interval))
    return text


@asynccontextmanager
async def child(argv: list[str], log: Path, ready_url: str) -> AsyncIterator[None]:
    """`argv` running, its output in `log`, until `ready_url` answers 200 (30 s at most);
    then SIGTERM, SIGKILL after 10 s, reaped, on the way out however it is left."""
    with log.open("wb") as out:
        started = time.monotonic()
        process = await anyio.open_process(argv, stdin=None, stdout=out, stderr=out)
        try:
            await _wait_ready(process, ready_url, log)
            logger.info("monitoring.ready %s in %.1f s", log.stem, time.monotonic() - started)
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await _stop(process)


async def _wait_ready(process: anyio.abc.Process, url: str, log: Path) -> None:
    async with aiohttp.ClientSession() as http:
        with anyio.fail_after(30):
            while True:
                assert process.returncode is None, f"{log.name} exited:\n{log.read_text()}"
                try:
                    async with http.get(url) as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await anyio.sleep(0.1)


async def _stop(process: anyio.abc.Process) -> None:
    if process.returncode is None:
        process.terminate()
        with anyio.move_on_after(10):
            await process.wait()
    if process.returncode is None:
        process.kill()
    await process.wait()


@asynccontextmanager
async def monitoring(gateway: str, workdir: Path, interval: str = "1s") -> AsyncIterator[str]:
    """A blackbox exporter and a Prometheus with the shipped config and rules, watching the
    gateway at `gateway` (host:port); yields Prometheus's base URL."""
    workdir.mkdir()
    blackbox = f"127.0.0.1:{free_port()}"
    web = f"127.0.0.1:{free_port()}"
    config = workdir / "prometheus.yml"
    config.write_text(prometheus_config(gateway, blackbox, interval))
    shutil.copy(RULES, workdir / RULES.name)  # beside the config, as rule_files names it
    exporter = [
        str(BLACKBOX), f"--config.file={MONITORING / 'blackbox.yml'}",
        f"--web.listen-address={blackbox}",
    ]  # fmt: skip
    prometheus = [
        str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={web}",
    ]  # fmt: skip
    async with (
        child(exporter, workdir / "blackbox.log", f"http://{blackbox}/-/healthy"),
        child(prometheus, workdir / "prometheus.log", f"http://{web}/-/ready"),
    ):
        yield f"http://{web}"


class Prometheus:
    """Prometheus's HTTP API: instant queries and the alerts."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector `promql` evaluates to now: [{"metric": {...}, "value": [t, "v"]}]."""
        async with self.http.get("/api/v1/query", params={"query": promql}) as resp:
            body = await resp.json()
        assert resp.status == 200 and body["status"] == "success", body
        assert body["data"]["resultType"] == "vector", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def value(self, promql: str) -> float | None:
        """The value of a query that yields one series, None while it yields none."""
        result = await self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    async def alerts(self, state: str = "firing") -> list[dict[str, Any]]:
        """The alerts in `state` ("pending" or "firing"), with their labels and annotations."""
        async with self.http.get("/api/v1/alerts") as resp:
            body = await resp.json()
        assert resp.status == 200 and body["status"] == "success", body
        return [a for a in body["data"]["alerts"] if a["state"] == state]

    async def until(self, promql: str, expected: float, within: float) -> None:
        """Poll `promql` until it yields one series of value `expected`; fail after `within` s
        with what it yielded last."""
        last: float | None = None
        try:
            with anyio.fail_after(within):
                while True:
                    if (last := await self.value(promql)) == expected:
                        return
                    await anyio.sleep(0.2)
        except TimeoutError:
            raise AssertionError(f"{promql} is {last}, not {expected}, after {within} s") from None
