"""The shipped monitoring stack for real: Debian's Prometheus and blackbox exporter, with
deploy/monitoring's config (addresses and intervals changed) and rules (as shipped), watching
a real gateway over the real llama-server. Prometheus scrapes /metrics, the exporter probes
/health and /ready; then a corrupt GGUF breaks a model and AiServerModelFailed fires."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import aiohttp
import pytest

from backends.catalog import GEMMA
from core.config import LlamaServer, Pool, Roles
from tests.e2e.conftest import Client, real_settings, serving
from tests.helpers import llama_servers_on
from tests.monitoring.stack import MISSING, Prometheus, monitoring, stack_missing

pytestmark = [
    pytest.mark.llama,
    pytest.mark.skipif(stack_missing(), reason=MISSING),
    pytest.mark.timeout(180),
]
log = logging.getLogger(__name__)

BUDGET_MB = 4096
BROKEN = {"model": "broken", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def corrupt_gguf(folder: Path, default_model: Path) -> None:
    """broken.gguf: the default model's first 4 MiB, a valid header and then the file ends
    (llama-server exits on it, as tests/reliability's corrupt model)."""
    folder.mkdir()
    with default_model.open("rb") as f:
        (folder / "broken.gguf").write_bytes(f.read(4 * 2**20))


async def test_prometheus_scrapes_probes_and_alerts_on_a_failed_model_and_a_gone_gateway(
    tmp_path: Path, default_model: Path
) -> None:
    corrupt_gguf(tmp_path / "models", default_model)
    port = real_settings(tmp_path).llama_server.port
    settings = real_settings(
        tmp_path,
        roles=Roles(chat=GEMMA),  # every role from one llama-server: less to load
        pool=Pool(models_dir=str(tmp_path / "models"), memory_budget_mb=BUDGET_MB),
        llama_server=LlamaServer(port=port, restart_limit=1, backoff_initial_s=0.1),
    )
    gateway = f"{settings.host}:{settings.port}"
    async with (
        monitoring(gateway, tmp_path / "monitoring") as web,
        aiohttp.ClientSession(web) as http,
    ):
        prometheus = Prometheus(http)
        async with serving(settings) as client:
            await healthy(prometheus)
            broken_port = await break_a_model(client, prometheus, gateway)
        assert not any(llama_servers_on(p) for p in (port, broken_port))
        await gone(prometheus)


async def healthy(prometheus: Prometheus) -> None:
    """Scraped, probed live and ready, no alert firing. Nothing has asked for a model yet."""
    watched = time.monotonic()
    await prometheus.until('up{job="ai-server"}', 1, within=30)
    log.info("monitoring.scraped %.1f s after the gateway started", time.monotonic() - watched)
    await prometheus.until('probe_success{job="ai-server-ready"}', 1, within=30)
    await prometheus.until('probe_success{job="ai-server-health"}', 1, within=30)
    assert await prometheus.value("ai_server_memory_budget_mb") == BUDGET_MB
    # Its own scrapes, counted from the second one on.
    await prometheus.until('count(ai_server_requests_total{route="/metrics"})', 1, within=30)
    assert await prometheus.query('probe_http_status_code{job="ai-server-ready"} == 200')
    assert await prometheus.alerts("firing") == []


async def break_a_model(client: Client, prometheus: Prometheus, gateway: str) -> int:
    """The first request for the corrupt model starts its llama-server, which exits; one
    restart later the model is FAILED, the request gets its 503, and the alert fires.
    Returns the broken model's llama-server port."""
    broke = time.monotonic()
    status, body = await client.post("/v1/chat/completions", BROKEN)
    assert status == 503, body
    failed = 'ai_server_llama_server_state{model="broken", state="failed"}'
    await prometheus.until(failed, 1, within=30)
    [series] = await prometheus.query(failed)
    fired = 'ALERTS{alertname="AiServerModelFailed", alertstate="firing"}'
    await prometheus.until(fired, 1, within=30)
    log.info("monitoring.alert_fired %.1f s after the request", time.monotonic() - broke)
    [alert] = await prometheus.alerts("firing")
    assert alert["labels"] == {
        "alertname": "AiServerModelFailed", "severity": "critical", "model": "broken",
        "instance": gateway,
    }  # fmt: skip
    assert alert["annotations"]["summary"] == f"Model broken has failed on {gateway}"
    # The broken model is no role's: the gateway stays ready, and the probe says so.
    assert await prometheus.value('probe_success{job="ai-server-ready"}') == 1
    port = int(series["metric"]["port"])
    assert not llama_servers_on(port)
    return port


async def gone(prometheus: Prometheus) -> None:
    """The gateway stopped: scrapes and probes fail, and the alerts for it are pending (they
    fire after their `for:`, a minute, which the rules' unit tests check)."""
    stopped = time.monotonic()
    await prometheus.until('up{job="ai-server"}', 0, within=30)
    await prometheus.until('probe_success{job="ai-server-health"}', 0, within=30)
    for name in ("AiServerDown", "AiServerNotLive", "AiServerNotReady"):
        await prometheus.until(f'ALERTS{{alertname="{name}", alertstate="pending"}}', 1, 30)
    log.info("monitoring.down_pending %.1f s after the stop", time.monotonic() - stopped)
