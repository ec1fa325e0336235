"""Throughput ceiling and memory (figures 3 and 7).

An instant stub upstream (bench/stub_llama.py) stands where llama-server stands, so the
gateway's own cost is all there is to measure. The gateway runs with every feature on: an API
key, metrics, its access log, admission, and routing (the model with 2 replicas, two stubs).
The floor is bench/floor.py, the least a Starlette + aiohttp passthrough can do, under the
same uvicorn on the same stack (uvloop + httptools). wrk (Debian's package) drives both with
the same /v1/chat/completions request, rounds alternating ABBA; the ratio is of medians.

Added latency without contention: one request at a time, interleaved, to the gateway and
straight to an identical stub; the median of the paired differences (each round's gateway
request less its direct one), with the quartiles. With the real llama-server
(bench/overhead.py) llama's two threads compete with the gateway for this machine's two
cores; here nothing does.

Memory: the gateway's RSS when idle with the dashboard and the model pool loaded (a page of
the dashboard and its script served, the model's instances ready), after the first 10k
requests and at the end; and in cli
mode, the RSS of the gateway and everything under it when idle (only the gateway should be
resident)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import (
    ROOT,
    Machine,
    free_port,
    gateway,
    percentile,
    process,
    rss_mib,
    write_section,
)

ROUNDS = 6  # ABBA: three each
SECONDS = 5
CONNECTIONS = 8
KEY = "bench-key"
TARGET = 0.75  # of the floor's throughput (issue 16)
LATENCY_TARGET_MS = 0.3
RSS_TARGET_MIB = 80
BODY = '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":1}'
LUA = f"""wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {KEY}"
"""


def wrk(url: str, script: Path, seconds: int = SECONDS) -> tuple[float, int]:
    """(requests per second, requests) of one wrk run; fails on any non-2xx answer."""
    argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout  # noqa: S603
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    assert rate and count, out
    return float(rate.group(1)), int(count.group(1))


LATENCY_ROUNDS = 400


async def added_latency(gateway_url: str, stub_url: str) -> tuple[float, list[float], float]:
    """(direct p50, each round's gateway less direct, gateway p99 - direct p99), seconds."""
    body = json.loads(BODY)
    times: dict[str, list[float]] = {"direct": [], "gateway": []}
    targets = {
        "direct": (stub_url, {}),
        "gateway": (gateway_url, {"Authorization": f"Bearer {KEY}"}),
    }
    async with aiohttp.ClientSession() as http:
        for i in range(LATENCY_ROUNDS):
            for name in ("direct", "gateway") if i % 2 == 0 else ("gateway", "direct"):
                url, headers = targets[name]
                started = time.perf_counter()
                async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
                    await r.read()
                    r.raise_for_status()
                if i >= 50:  # warm-up rounds left out
                    times[name].append(time.perf_counter() - started)
    direct, through = times["direct"], times["gateway"]
    return (
        statistics.median(direct),
        [b - a for a, b in zip(direct, through, strict=True)],
        percentile(through, 0.99) - percentile(direct, 0.99),
    )


def dashboard_loaded(url: str) -> None:
    """Serve a dashboard page and a script of it, so its modules and templates are loaded."""
    import urllib.request

    for path in ("/ui", "/ui/static/status.js"):
        try:
            with urllib.request.urlopen(url + path, timeout=10) as resp:  # noqa: S310
                resp.read()
        except OSError:
            pass  # measured all the same


def verdict(met: bool, missed: str) -> str:
    return "met" if met else f"**not met**, {missed}"


def main() -> int:
    if shutil.which("wrk") is None:
        print("wrk is not installed: `make bench` installs Debian's package", file=sys.stderr)
        return 1
    machine = Machine()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(LUA)
        stub = Path(tmp) / "llama-server"  # what the gateway's supervisor starts
        stub.write_text(f'#!/bin/sh\nexec {sys.executable} {ROOT}/bench/stub_llama.py "$@"\n')
        stub.chmod(0o755)
        stub_port, floor_port = free_port(), free_port()
        extra = (
            f'[auth]\napi_keys = ["{KEY}"]\n[binaries]\nllama_server = "{stub}"\n'
            "[models.gemma-3-270m]\nreplicas = 2\n"
        )
        rates: dict[str, list[float]] = {"gateway": [], "floor": []}
        floor = [sys.executable, "-m", "bench.floor", str(floor_port),
                 f"http://127.0.0.1:{stub_port}"]  # fmt: skip
        with (
            process([str(stub), "--port", str(stub_port)], f"http://127.0.0.1:{stub_port}/health"),
            process(floor, f"http://127.0.0.1:{floor_port}/health"),
            gateway(extra=extra) as gw,
        ):
            urls = {"gateway": gw.url, "floor": f"http://127.0.0.1:{floor_port}"}
            dashboard_loaded(gw.url)
            idle = rss_mib(gw.pid)
            direct, paired, added_p99 = asyncio.run(
                added_latency(gw.url, f"http://127.0.0.1:{stub_port}")
            )
            served = 0
            after_10k = None
            for name in ("gateway", "floor") * 2:  # warm both
                wrk(urls[name] + "/v1/chat/completions", script)
            for i in range(ROUNDS):
                for name in ("gateway", "floor") if i % 2 == 0 else ("floor", "gateway"):
                    rate, count = wrk(urls[name] + "/v1/chat/completions", script)
                    rates[name].append(rate)
                    if name == "gateway":
                        served += count
                        if after_10k is None and served >= 10_000:
                            after_10k = rss_mib(gw.pid)
            end = rss_mib(gw.pid)
    machine_line = machine.line()
    with gateway("cli") as gw:
        cli_idle = rss_mib(gw.pid, descendants=True)
    q1, added, q3 = statistics.quantiles(paired, n=4)
    gateway_rate, floor_rate = (
        statistics.median(rates["gateway"]),
        statistics.median(rates["floor"]),
    )
    ratio = gateway_rate / floor_rate
    late = f"by {added * 1000 - LATENCY_TARGET_MS:.2f} ms"
    heavy = f"by {idle - RSS_TARGET_MIB:.1f} MiB"
    write_section(
        "throughput",
        [
            f"**Throughput ceiling** (instant stub upstream; wrk, {CONNECTIONS} connections, "
            f"{ROUNDS} rounds of {SECONDS} s each, ABBA; /v1/chat/completions)",
            "",
            "| target | req/s median | rounds |",
            "|---|---|---|",
            "| gateway: API key, metrics, access log, admission, routing (2 replicas) | "
            f"{gateway_rate:.0f} | "
            f"{', '.join(f'{r:.0f}' for r in rates['gateway'])} |",
            f"| floor: minimal Starlette + aiohttp passthrough | {floor_rate:.0f} | "
            f"{', '.join(f'{r:.0f}' for r in rates['floor'])} |",
            "",
            f"Gateway / floor: **{ratio:.2f}x** (target >= {TARGET}x: "
            f"{verdict(ratio >= TARGET, f'{TARGET - ratio:.2f}x short')}). Both on uvloop + "
            "httptools; wrk, the stubs, the floor and the gateway share the 2 cores.",
            "",
            f"**Added latency without contention** ({LATENCY_ROUNDS - 50} rounds, one request at "
            f"a time, interleaved, same request): stub direct {direct * 1000:.3f} ms p50; through "
            f"the gateway, paired difference **{added * 1000:+.3f} ms** median (quartiles "
            f"{q1 * 1000:+.3f} / {q3 * 1000:+.3f}), p99 {added_p99 * 1000:+.2f} ms. Target <= "
            f"{LATENCY_TARGET_MS} ms: {verdict(added * 1000 <= LATENCY_TARGET_MS, late)}.",
            "",
            "**Memory**: gateway RSS idle, the dashboard and the model pool loaded, "
            f"{idle:.1f} MiB "
            f"(target <= {RSS_TARGET_MIB} MiB: {verdict(idle <= RSS_TARGET_MIB, heavy)}); "
            f"after the first 10k requests {after_10k or end:.1f} MiB, after all {served} "
            f"{end:.1f} MiB. Cli mode, idle: {cli_idle:.1f} MiB for the gateway and everything "
            "under it.",
            "",
            machine_line,
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
