"""Issue 24: the gateway before and after the redesign of chat answers, side by side.

Before (commit 037d728): server mode passed llama-server's SSE bytes through untouched.
After: the server backend parses them into typed events (core.chat) and the OpenAI dialect
writes them again as chat.completion.chunk SSE; non-streamed answers go through
core.chat.Answer.

Each tree is a checkout of its own (a git worktree), run as a gateway process of its own
(PYTHONPATH and working directory in that tree), both up at once, with bench/throughput.py's
settings: every feature on (an API key, metrics, the access log, admission, routing over 2
replicas), each replica an instant stub (bench/stub_llama.py) the gateway's supervisor starts.

Two processes running the same code differ by about 10% here, for as long as they live (an
A/A run showed it: pass the same tree twice). So the run is in PHASES: each starts both
gateways afresh (the order alternating), measures, and stops them; a process's own luck
then counts as noise, not as the tree's.

Throughput: wrk (bench/throughput.py's run, 8 connections, 3 s a round) on the non-streamed
/v1/chat/completions request, rounds ABBA; each pair of rounds gives a paired ratio
after/before; and the gateway process's CPU time per request over each round. Streaming: the
same streamed /v1/chat/completions (16 tokens, usage asked for) through each, one at a time,
the order alternating per round, a 5 ms pause before each; per stream the time to its first
event, to its first text and to its last ([DONE]); paired differences per round (after less
before), median and quartiles, and the ratio of the medians.

    python -m bench.refactor <worktree at 037d728> <worktree at the commit after>

With the same tree twice, an A/A control: written to a section of its own.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import anyio

from bench.common import ROOT, Gateway, Machine, gateway, write_section
from bench.throughput import CONNECTIONS, KEY, LUA, wrk

SIDES = ("before", "after")
PHASES = 4  # each with both gateways started afresh, the first started alternating
ROUNDS = 6  # pairs of wrk rounds per phase, ABBA
SECONDS = 3  # per wrk round: short rounds, so a pair shares the machine's state
STREAM_ROUNDS = 250  # per phase
WARM = 20  # streaming rounds left out, per phase
TOLERANCE = 0.05  # issue 24: not more than 5% worse
TICK = os.sysconf("SC_CLK_TCK")
BODY: dict[str, object] = {
    "messages": [{"role": "user", "content": "Hi"}],
    "max_tokens": 16,
    "stream": True,
    "stream_options": {"include_usage": True},
}
KEYS = ("first", "text", "last", "events")
Streams = dict[str, dict[str, list[float]]]


def imported_from(tree: Path) -> Path:
    """Where a gateway process started in `tree` imports `gateway` from."""
    argv = [sys.executable, "-c", "import gateway; print(gateway.__file__)"]
    env = os.environ | {"PYTHONPATH": str(tree)}
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env, cwd=tree)  # noqa: S603
    return Path(out.stdout.strip())


def commit_of(tree: Path) -> str:
    argv = ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()  # noqa: S603


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (its own, not its children's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def busy_seconds() -> float:
    """CPU time all processes on this machine have had so far, all cores together."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / TICK


def ours() -> float:
    """CPU time of this process and of its children waited for (the gateways and their
    stubs, once stopped; wrk)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def order(i: int) -> tuple[str, str]:
    """ABBA: before first in rounds 0, 3, 4, 7, ..."""
    return SIDES if i % 4 in (0, 3) else (SIDES[1], SIDES[0])


async def first_line(url: str) -> str:
    """The first SSE event of one stream, for the record of what each tree sends."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url + "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {KEY}"}
        ) as resp,
    ):
        resp.raise_for_status()
        async for line in resp.content:
            if line.startswith(b"data: "):
                return line.decode().strip()
    raise RuntimeError(f"{url}: a stream without an event")


async def stream_times(http: aiohttp.ClientSession, url: str) -> tuple[float, float, float, int]:
    """bench/streaming.py's stream_once, with the text: (time to the first event, to the first
    with text, to the last, events), from the request's start."""
    started = time.perf_counter()
    first = text = last = 0.0
    count = 0
    headers = {"Connection": "close", "Authorization": f"Bearer {KEY}"}
    async with http.post(url, json=BODY, headers=headers) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if line.startswith(b"data: "):
                last = time.perf_counter() - started
                count += 1
                first = first or last
                if not text and b'"content":"' in line:
                    text = last
    return first, text, last, count


async def streams(urls: dict[str, str], out: Streams) -> None:
    """Per side into `out`: time to first event, to the first text, to the last, and events
    per stream, one per round."""
    async with aiohttp.ClientSession() as http:
        for i in range(STREAM_ROUNDS + WARM):
            for side in order(i):
                await anyio.sleep(0.005)
                times = await stream_times(http, urls[side] + "/v1/chat/completions")
                if i >= WARM:
                    for key, value in zip(KEYS, times, strict=True):
                        out[side][key].append(value)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4)
    return q1, median, q3


def verdict(worse: float) -> str:
    """`worse`: how much worse after is than before (0.1: 10% worse; below 0: better)."""
    if worse <= 0:
        return f"met, after {-worse:.1%} better"
    if worse <= TOLERANCE:
        return f"met, after {worse:.1%} worse"
    return f"**not met, after {worse:.1%} worse**"


def stream_row(name: str, runs: Streams, key: str) -> tuple[str, float]:
    before, after = runs["before"][key], runs["after"][key]
    q1, diff, q3 = quartiles([a - b for b, a in zip(before, after, strict=True)])
    ratio = statistics.median(after) / statistics.median(before)
    row = (
        f"| {name} | {statistics.median(before) * 1000:.2f} | "
        f"{statistics.median(after) * 1000:.2f} | **{diff * 1000:+.3f}** "
        f"({q1 * 1000:+.3f} / {q3 * 1000:+.3f}) | **{ratio:.3f}x** |"
    )
    return row, ratio


def main() -> int:
    if len(sys.argv) != 3:
        print("python -m bench.refactor <before tree> <after tree>", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("wrk is not installed: `make bench` installs Debian's package", file=sys.stderr)
        return 1
    trees = dict(zip(SIDES, (Path(arg).resolve() for arg in sys.argv[1:]), strict=True))
    for side, tree in trees.items():
        where = imported_from(tree)
        if not where.is_relative_to(tree):
            raise RuntimeError(f"{side}: {tree} imports gateway from {where}")
        print(f"{side}: {commit_of(tree)}, gateway from {where}", file=sys.stderr)
    machine = Machine()
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    cpu: dict[str, list[float]] = {side: [] for side in SIDES}  # us per request
    per_phase: list[float] = []  # the median paired ratio of each phase
    runs: Streams = {side: {key: [] for key in KEYS} for side in SIDES}
    firsts: dict[str, str] = {}
    busy, mine = busy_seconds(), ours()
    wrk_seconds = stream_seconds = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(LUA)
        stub = Path(tmp) / "llama-server"  # what each gateway's supervisor starts
        stub.write_text(f'#!/bin/sh\nexec {sys.executable} {ROOT}/bench/stub_llama.py "$@"\n')
        stub.chmod(0o755)
        extra = (
            f'[auth]\napi_keys = ["{KEY}"]\n[binaries]\nllama_server = "{stub}"\n'
            "[models.gemma-3-270m]\nreplicas = 2\n"
        )
        for phase in range(PHASES):
            with ExitStack() as stack:
                gws: dict[str, Gateway] = {}
                for side in SIDES if phase % 2 == 0 else SIDES[::-1]:
                    gws[side] = stack.enter_context(gateway(extra=extra, tree=trees[side]))
                urls = {side: gws[side].url for side in SIDES}
                if phase == 0:
                    firsts = {side: anyio.run(first_line, urls[side]) for side in SIDES}
                for side in SIDES * 2:  # warm both
                    wrk(urls[side] + "/v1/chat/completions", script, SECONDS)
                started = time.monotonic()
                paired = []
                for i in range(2 * ROUNDS):
                    for side in order(i):
                        spent = cpu_seconds(gws[side].pid)
                        rate, count = wrk(urls[side] + "/v1/chat/completions", script, SECONDS)
                        rates[side].append(rate)
                        cpu[side].append((cpu_seconds(gws[side].pid) - spent) / count * 1e6)
                    paired.append(rates["after"][-1] / rates["before"][-1])
                per_phase.append(statistics.median(paired))
                wrk_seconds += time.monotonic() - started
                started = time.monotonic()
                anyio.run(streams, urls, runs)
                stream_seconds += time.monotonic() - started
    machine_line = machine.line()
    elapsed = time.monotonic() - machine.started
    others = (busy_seconds() - busy - (ours() - mine)) / elapsed
    commits = {side: commit_of(trees[side]) for side in SIDES}
    lines = report(rates, cpu, per_phase, runs, firsts, commits)
    lines.append(
        f"wrk {wrk_seconds:.0f} s, streams {stream_seconds:.0f} s. {machine_line} Other "
        f"processes than this run's used {others:.2f} cores on average over it."
    )
    control = trees["before"] == trees["after"]
    write_section("refactor-control" if control else "refactor", lines)
    return 0


def report(
    rates: dict[str, list[float]],
    cpu: dict[str, list[float]],
    per_phase: list[float],
    runs: Streams,
    firsts: dict[str, str],
    commits: dict[str, str],
) -> list[str]:
    paired = [a / b for b, a in zip(rates["before"], rates["after"], strict=True)]
    p1, ratio, p3 = quartiles(paired)
    before_rate, after_rate = (statistics.median(rates[side]) for side in SIDES)
    cpu_paired = [a / b for b, a in zip(cpu["before"], cpu["after"], strict=True)]
    c1, cpu_ratio, c3 = quartiles(cpu_paired)
    first_row, first_ratio = stream_row("time to first event", runs, "first")
    text_row, text_ratio = stream_row("time to the first text", runs, "text")
    last_row, last_ratio = stream_row("time to the last event ([DONE])", runs, "last")
    events = {side: sorted({int(n) for n in runs[side]["events"]}) for side in SIDES}
    if commits["before"] == commits["after"]:
        head = [
            "## Issue 24: A/A control",
            "",
            f"bench/refactor.py with the same tree (commit {commits['after']}) on both "
            'sides, "before" and "after" being two gateway processes of the same code: '
            "what the method reads as a difference where there is none.",
        ]
    else:
        head = [
            "## Issue 24: before and after the redesign",
            "",
            f"Before: commit {commits['before']} (server mode passed llama-server's SSE "
            f"bytes through untouched). After: commit {commits['after']} (the server backend "
            "parses them into core.chat events, gateway/dialects/openai.py writes them again; "
            "non-streamed answers through core.chat.Answer).",
        ]
    return [
        *head,
        "",
        f"Both gateways up at once, each from its own git worktree, with "
        "bench/throughput.py's settings (API key, metrics, access log, admission, routing "
        f"over 2 replicas of the instant stub upstream); {PHASES} phases, each starting both "
        "afresh (which first alternating) and stopping them after its rounds.",
        "",
        f"**Throughput** (wrk, {CONNECTIONS} connections, {PHASES * ROUNDS * 2} rounds of "
        f"{SECONDS} s per side, ABBA; non-streamed /v1/chat/completions)",
        "",
        "| tree | req/s median | rounds | gateway CPU per request, us, median |",
        "|---|---|---|---|",
        *(
            f"| {side} | {statistics.median(rates[side]):.0f} | "
            f"{', '.join(f'{r:.0f}' for r in rates[side])} | "
            f"{statistics.median(cpu[side]):.0f} |"
            for side in SIDES
        ),
        "",
        f"After / before: **{after_rate / before_rate:.3f}x** the ratio of the medians; "
        f"paired per round **{ratio:.3f}x** median (quartiles {p1:.3f} / {p3:.3f}); per "
        f"phase {', '.join(f'{r:.3f}' for r in per_phase)}. Issue 24's bound, after not "
        f"more than {TOLERANCE:.0%} worse (the paired median): {verdict(1 - ratio)}. The "
        "gateway process's CPU time per request (user + system over each round), after / "
        f"before paired: {cpu_ratio:.3f}x median (quartiles {c1:.3f} / {c3:.3f}): "
        f"{verdict(cpu_ratio - 1)}.",
        "",
        f"**Streaming** ({PHASES * STREAM_ROUNDS} rounds, {WARM} of warm-up left out per "
        "phase; one stream at a time through each, ABBA, a 5 ms pause before each, a "
        "connection per stream; 16 tokens with `stream_options.include_usage`; ms: medians, "
        "and the median of the paired differences after less before with its quartiles)",
        "",
        "| | before | after | after - before, paired | after / before |",
        "|---|---|---|---|---|",
        first_row,
        text_row,
        last_row,
        f"| events per stream | {events['before']} | {events['after']} | | |",
        "",
        "Issue 24's bound on the time to first event (the ratio of the medians): "
        f"{verdict(first_ratio - 1)}. To the first text: {verdict(text_ratio - 1)}; the whole "
        f"stream: {verdict(last_ratio - 1)}.",
        "",
        "What each sends first (the stub's events are a role-only delta, then 16 of `ok`): "
        f"before `{firsts['before']}`; after `{firsts['after']}`.",
        "",
        f"    python -m bench.refactor <worktree at {commits['before']}> "
        f"<worktree at {commits['after']}>",
        "",
    ]


if __name__ == "__main__":
    sys.exit(main())
