"""`make soak`: minutes of mixed load on the real gateway, with chaos, then an audit.

`ai-server serve` runs as its own process over the real llama.cpp build and default model.
Workers send chat (plain and streamed), embeddings and vision requests in a loop; a chaos
task kill -9s the llama-server now and then and switches between server and cli mode. At
the end the gateway gets SIGTERM and the report says: requests, answers by status and
error type, hung requests (no answer within the client timeout: must be 0), the gateway's
RSS after warm-up and at the end (must be flat), llama.cpp processes and temp files left
behind (must be 0). Not part of `make test`: `make soak ARGS="--minutes 10"`.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from PIL import Image

from bench.common import parent_pid, rss_mib
from tests.conftest import free_port
from tests.helpers import llama_pids, wait_ready

CLIENT_TIMEOUT = 180.0  # longer than any answer may take: past it, a request counts as hung
LLAMA_BINARIES = ("llama-server", "llama-completion", "llama-embedding", "llama-mtmd-cli")


def llama_processes(ports: set[int], parent: int) -> list[int]:
    """llama.cpp processes this soak started: on its llama-server ports or children of it."""
    return [
        pid
        for pid, args in llama_pids(LLAMA_BINARIES).items()
        if parent_pid(pid) == parent or any(str(port) in args for port in ports)
    ]


def _term_with_parent() -> None:
    """In the gateway's child, before exec: SIGTERM it when this runner dies, however it
    dies (a killed soak otherwise leaves its gateway and llama-server running)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def private_files() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("ai-server-*")}


def image_b64() -> str:
    out = io.BytesIO()
    Image.effect_noise((96, 64), 60).convert("RGB").save(out, "JPEG")
    return base64.b64encode(out.getvalue()).decode()


class Soak:
    def __init__(self, url: str, seconds: float, seed: int) -> None:
        self.url = url
        self.deadline = time.monotonic() + seconds
        self.random = random.Random(seed)
        self.answers: Counter[str] = Counter()
        self.by_route: Counter[str] = Counter()
        self.hung = 0
        self.malformed = 0
        self.chaos: Counter[str] = Counter()
        self.image = image_b64()
        self.rss: list[float] = []

    def request(self) -> tuple[str, dict[str, Any]]:
        pick = self.random.random()
        if pick < 0.35:
            words = " ".join(self.random.choices(["llama", "cat", "river", "sun", "-n"], k=8))
            return "/api/chat", {"messages": [{"role": "user", "content": words}],
                                 "max_tokens": self.random.randint(1, 12)}  # fmt: skip
        if pick < 0.5:
            return "/v1/chat/completions", {
                "messages": [{"role": "user", "content": "Say something."}],
                "max_tokens": 8,
                "stream": True,
            }
        if pick < 0.85:
            texts = [f"soak text {self.random.random()}" for _ in range(self.random.randint(1, 4))]
            return "/api/generate-embeddings", {"input": texts}
        return "/api/tag", {"image": self.image, "max_tags": 3}

    async def worker(self, http: aiohttp.ClientSession) -> None:
        while time.monotonic() < self.deadline:
            route, body = self.request()
            self.by_route[route] += 1
            try:
                with anyio.fail_after(CLIENT_TIMEOUT):
                    async with http.post(self.url + route, json=body) as resp:
                        data = await resp.read()
                        status = resp.status
                        retry_after = resp.headers.get("Retry-After")
            except TimeoutError:
                self.hung += 1
                continue
            except aiohttp.ClientError as exc:
                self.answers[f"connection error: {type(exc).__name__}"] += 1
                continue
            self.answers[self.classify(status, data, retry_after, route)] += 1
            if status in (429, 503) and retry_after:  # as a well-behaved client does
                await anyio.sleep(min(float(retry_after), 5.0))

    def classify(self, status: int, data: bytes, retry_after: str | None, route: str) -> str:
        if status == 200:
            if route != "/v1/chat/completions" or data.rstrip().endswith(b"data: [DONE]"):
                return "200"
            # A stream that fails after its first event must end with an error event.
            last = data.rstrip().rsplit(b"\n\n", 1)[-1].removeprefix(b"data: ")
            try:
                return f"200, then an error event: {json.loads(last)['error']['type']}"
            except (ValueError, KeyError, TypeError):
                self.malformed += 1
                return "200 stream cut without [DONE] or an error event"
        try:
            kind = json.loads(data)["error"]["type"]
        except (ValueError, KeyError, TypeError):
            self.malformed += 1
            return f"{status} not a JSON error"
        if status == 503 and not retry_after:
            self.malformed += 1
            return "503 without Retry-After"
        return f"{status} {kind}"

    async def sample_rss(self, pid: int) -> None:
        while time.monotonic() < self.deadline:
            await anyio.sleep(min(60.0, max(self.deadline - time.monotonic(), 0)))
            self.rss.append(rss_mib(pid))

    async def chaos_loop(self, http: aiohttp.ClientSession) -> None:
        mode = "server"
        while time.monotonic() < self.deadline - 15:
            await anyio.sleep(self.random.uniform(8, 20))
            if self.random.random() < 0.6 and mode == "server":
                async with http.get(self.url + "/ready") as resp:
                    ready = await resp.json()
                pids = [p["pid"] for p in ready.get("processes", []) if p.get("pid")]
                if pids:
                    os.kill(self.random.choice(pids), signal.SIGKILL)
                    self.chaos["kill -9 llama-server"] += 1
            else:
                mode = "cli" if mode == "server" else "server"
                async with http.post(self.url + "/api/config", json={"llm_mode": mode}) as resp:
                    self.chaos[f"switch to {mode} ({resp.status})"] += 1
        if mode != "server":  # end where it started
            async with http.post(self.url + "/api/config", json={"llm_mode": "server"}):
                pass


async def run(minutes: float, workers: int, seed: int, budget: int) -> int:
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    port, llama_port = free_port(), free_port()
    config = work / "config.toml"
    # The chaos kills far more often than the default restart budget (5 in 5 minutes)
    # allows: with it, server mode would sit FAILED between mode switches. --budget 5 shows
    # that; the default tests recovery from every kill.
    config.write_text(
        f'port = {port}\nstate_dir = "{work / "state"}"\n[llama_server]\nport = {llama_port}\n'
        f"restart_limit = {budget}\n"
        f'[ollama]\nlisten = "127.0.0.1:{free_port()}"\n'  # never a real Ollama's 11434
    )
    temp_before = private_files()
    log = (work / "gateway.log").open("wb")
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_term_with_parent,
    )
    url = f"http://127.0.0.1:{port}"
    soak = Soak(url, minutes * 60, seed)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await wait_ready(http, url)
        async with http.post(url + "/api/generate-embeddings", json={"input": "warm"}):
            pass
        rss_start = rss_mib(gateway.pid)
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(soak.worker, http)
            tg.start_soon(soak.chaos_loop, http)
            tg.start_soon(soak.sample_rss, gateway.pid)
        elapsed = time.monotonic() - started
        rss_end = rss_mib(gateway.pid)
    gateway.send_signal(signal.SIGTERM)
    exit_code = gateway.wait(timeout=60)
    log.close()
    ports = set(range(llama_port, llama_port + 4))
    leftover = llama_processes(ports, gateway.pid)
    temp_left = private_files() - temp_before
    total = sum(soak.answers.values()) + soak.hung
    print(f"# Soak report ({elapsed / 60:.1f} min, {workers} workers, seed {seed}, "
          f"restart budget {budget})\n")  # fmt: skip
    print(f"- requests: {total} ({total / elapsed:.1f}/s)")
    for route, count in sorted(soak.by_route.items()):
        print(f"  - {route}: {count}")
    print("- answers by status and error type:")
    for answer, count in soak.answers.most_common():
        print(f"  - {answer}: {count}")
    print(f"- chaos: {dict(soak.chaos)}")
    print(f"- hung (no answer within {CLIENT_TIMEOUT:.0f} s): {soak.hung}")
    print(f"- malformed answers: {soak.malformed}")
    print(f"- gateway RSS after warm-up {rss_start:.1f} MiB, at the end {rss_end:.1f} MiB; "
          f"each minute: {', '.join(f'{r:.1f}' for r in soak.rss)}")  # fmt: skip
    print(f"- gateway exit status after SIGTERM: {exit_code}")
    print(f"- llama.cpp processes left: {len(leftover)} {leftover}")
    print(f"- temp files left: {len(temp_left)} {sorted(temp_left)}")
    print(f"- gateway log: {work / 'gateway.log'}")
    failed = soak.hung or soak.malformed or leftover or temp_left or exit_code != 0
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--budget", type=int, default=1000, help="[llama_server] restart_limit")
    args = parser.parse_args()
    sys.exit(anyio.run(run, args.minutes, args.workers, args.seed, args.budget))


if __name__ == "__main__":
    main()
