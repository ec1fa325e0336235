"""Fair shares under a flood (issue 17): client B's latency while client A floods the model.

One `ai-server serve` on the real gemma-3-270m, server mode, 4 slots, two named keys. A
keeps FLOOD chats going at once (three times the slots: 4 in flight, 8 queued), of 8 to 24
tokens in turn (a base model does not stop early), so that its requests end at different
times. B sends one chat of 16 tokens at a time, each as soon as the one before returns.

"Fair" is B with its own key: its request waits in its own line and gets one of the next
two freed slots. "FIFO" is B with A's key: the gateway cannot tell the two apart, so B
waits behind every request A has queued, which is what a first-come-first-served queue
across everyone gives. The figure is B's median latency under the flood as a multiple of
B's median unloaded (nothing else running), both measured in this run; rounds alternate the
two under one flood."""

from __future__ import annotations

import argparse
import statistics
import time

import aiohttp
import anyio

from bench.common import BENCH_MODEL, Machine, gateway, write_section

SLOTS = 4
FLOOD = 3 * SLOTS
LENGTHS = (8, 12, 16, 20, 24)  # A's max_tokens, in turn
B_TOKENS = 16
KEYS = {"a": "a-key", "b": "b-key"}
CONFIG = (
    f"[limits]\nmax_concurrency = {SLOTS}\nmax_queue = {2 * FLOOD}\nper_client_queue = {FLOOD}\n"
    '[auth.keys.a]\nkey = "a-key"\n[auth.keys.b]\nkey = "b-key"\n'
)


async def chat(http: aiohttp.ClientSession, url: str, key: str, tokens: int = B_TOKENS) -> float:
    started = time.perf_counter()
    headers = {"Authorization": f"Bearer {key}"}
    body = {
        "model": BENCH_MODEL.name,
        "messages": [{"role": "user", "content": "Tell me about llamas."}],
        "max_tokens": tokens,
        "temperature": 0,
    }
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
        answer = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{resp.status} for key {key}: {answer[:300]!r}")
    return time.perf_counter() - started


async def measure(url: str, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"unloaded": [], "fair": [], "fifo": []}
    async with aiohttp.ClientSession() as http:
        for _ in range(rounds):
            times["unloaded"].append(await chat(http, url, KEYS["b"]))

        async def flood(n: int) -> None:
            while True:
                await chat(http, url, KEYS["a"], LENGTHS[n % len(LENGTHS)])
                n += 1

        async with anyio.create_task_group() as tg:
            for n in range(FLOOD):
                tg.start_soon(flood, n)
            await anyio.sleep(2)  # the flood fills its slots and its line
            for n in range(rounds):
                order = ("fair", "fifo") if n % 2 == 0 else ("fifo", "fair")
                for kind in order:
                    key = KEYS["b"] if kind == "fair" else KEYS["a"]
                    times[kind].append(await chat(http, url, key))
            tg.cancel_scope.cancel()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    machine = Machine()
    with gateway(extra=CONFIG) as gw:
        times = anyio.run(measure, gw.url, args.rounds)
    unloaded = statistics.median(times["unloaded"])
    lines = [
        "## Fair shares: one client's latency under another's flood",
        "",
        f"Client A keeps {FLOOD} chats going at once on the real {BENCH_MODEL.name} "
        f"({SLOTS} slots; {LENGTHS[0]} to {LENGTHS[-1]} tokens each); client B sends one "
        f"chat of {B_TOKENS} tokens at a time. "
        "B's median latency under the flood, as a multiple of its median unloaded, "
        f"{args.rounds} requests each (`python -m bench.fairness`). Without fair sharing "
        "is B using A's key: one client, one first-come-first-served line.",
        "",
        "| B's requests | median latency | x unloaded |",
        "|---|---|---|",
        f"| unloaded | {unloaded * 1000:.0f} ms | 1.00x |",
    ]
    for kind, label in (("fair", "A flooding, fair sharing"), ("fifo", "A flooding, FIFO")):
        median = statistics.median(times[kind])
        lines.append(f"| {label} | {median * 1000:.0f} ms | {median / unloaded:.2f}x |")
    lines += ["", machine.line()]
    write_section("fairness", lines)


if __name__ == "__main__":
    main()
