"""Fair shares: one key floods a model, another asks one request at a time; the second never
waits behind more than one of the first's requests, and the flood gets its own 429s. Against
the fake llama-server and once against the real one. Orders and counts, never timings: the
order is the gateway's own, from its admission log."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest

from backends.catalog import SMOLLM2
from core.config import Auth, Limits, NamedKey, Settings
from tests.e2e.conftest import Client, fake_settings, real_settings, serving
from tests.supervisor.conftest import behave

KEYS = {"a": "a-secret", "b": "b-secret", "ops": "ops-secret"}
AUTH = Auth(keys={name: NamedKey(key=key, admin=name == "ops") for name, key in KEYS.items()})


def headers(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


async def lane_of(client: Client, model: str) -> dict[str, Any]:
    async with client.http.get("/api/clients", headers=headers("ops")) as resp:
        view: dict[str, list[dict[str, Any]]] = await resp.json()
    lanes = [lane for lane in view["lanes"] if lane["model"] == model]
    return lanes[0] if lanes else {"clients": {}}  # no request has reached it yet


async def flood_and_trickle(
    client: Client, model: str, body: dict[str, Any], per_client_queue: int, trickle: int
) -> tuple[list[tuple[int, str | None]], list[int]]:
    """a keeps 16 requests going at once; once a's line is full (a 429), b sends `trickle`
    requests one at a time, then a stops asking and its last requests end (cancelling them
    could cut off a 429 the gateway has counted). Returns a's (status, Retry-After) and b's."""
    flood: list[tuple[int, str | None]] = []
    trickled: list[int] = []
    a_line_full, stop = anyio.Event(), anyio.Event()

    async def ask(name: str) -> tuple[int, str | None]:
        async with client.http.post("/v1/chat/completions", json=body, headers=headers(name)) as r:
            await r.read()
            return r.status, r.headers.get("Retry-After")

    async def a_requests() -> None:
        while not stop.is_set():
            flood.append(await ask("a"))
            if flood[-1][0] == 429:
                a_line_full.set()  # (a flood, but not a busy loop)
                await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        for _ in range(16):
            tg.start_soon(a_requests)
        with anyio.fail_after(60):
            await a_line_full.wait()
        assert (await lane_of(client, model))["clients"]["a"]["queued"] == per_client_queue
        # /ready shows the lane's queue, not who is in it.
        status, ready = await client.get("/ready")
        [queue] = [q for q in ready["queues"] if q["model"] == model]
        assert queue["queued"] >= per_client_queue and queue["clients_queued"] >= 1
        assert set(queue) == {"backend", "model", "in_flight", "queued", "clients_queued"}
        for _ in range(trickle):
            status, _ = await ask("b")
            trickled.append(status)
        stop.set()
    return flood, trickled


def queued(lane: dict[str, Any]) -> dict[str, int]:
    """Each client's requests waiting in `lane` (from /api/clients)."""
    return {name: view["queued"] for name, view in lane["clients"].items()}


def admissions(caplog: pytest.LogCaptureFixture, lane: str) -> list[tuple[str, str]]:
    """("queued" | "granted", client) in the order the gateway did them, for `lane`."""
    events: list[tuple[str, str]] = []
    for record in caplog.records:
        if record.name == "gateway.admission" and record.args:
            event = record.msg.split(" ", 1)[0].removeprefix("admission.")
            name, client = record.args
            if name == lane:
                events.append((event, str(client)))
    return events


def waited_behind(events: list[tuple[str, str]], client: str, other: str) -> list[int]:
    """For each time `client` queued: how many of `other`'s requests were admitted before it."""
    counts = []
    behind: int | None = None
    for event, who in events:
        if who == client and event == "queued":
            behind = 0
        elif who == other and event == "granted" and behind is not None:
            behind += 1
        elif who == client and event == "granted" and behind is not None:
            counts.append(behind)
            behind = None
    return counts


def check(
    caplog: pytest.LogCaptureFixture,
    lane: str,
    flood: list[tuple[int, str | None]],
    trickled: list[int],
    view: dict[str, Any],
    trickle: int,
) -> None:
    assert trickled == [200] * trickle
    refused = [retry for status, retry in flood if status == 429]
    assert len(refused) + sum(status == 200 for status, _ in flood) == len(flood)
    assert refused and all(retry for retry in refused)  # a's own line was full: 429s
    assert view["clients"]["a"]["refused"] == len(refused)
    assert "b" not in view["clients"] or view["clients"]["b"]["refused"] == 0
    events = admissions(caplog, lane)
    waits = waited_behind(events, "b", "a")
    # b queued (a held every slot and had a line, at least the first time), and never
    # waited behind more than one of a's requests.
    assert waits and max(waits) <= 1, events


async def test_a_flood_does_not_starve_a_client_asking_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.admission")
    behave(monkeypatch, answer_delay=1.0)
    limits = Limits(request_timeout_s=30, max_concurrency=4, per_client_queue=8)
    settings: Settings = fake_settings(tmp_path, auth=AUTH, limits=limits)
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    async with serving(settings) as client:
        flood, trickled = await flood_and_trickle(client, "stub", body, 8, trickle=3)
        view = await lane_of(client, "stub")
        async with client.http.get("/metrics") as resp:
            metrics = await resp.text()
    check(caplog, "stub", flood, trickled, view, trickle=3)
    refused = view["clients"]["a"]["refused"]
    assert f'ai_server_client_refused_total{{client="a"}} {refused}.0' in metrics
    assert "secret" not in metrics


@pytest.mark.llama
async def test_fair_shares_with_the_real_llama_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.admission")
    limits = Limits(max_concurrency=2, per_client_queue=4)
    settings = real_settings(tmp_path, auth=AUTH, limits=limits)
    body = {
        "model": SMOLLM2,
        "messages": [{"role": "user", "content": "Count from 1 to 100, one number a line."}],
        "max_tokens": 16,
        "temperature": 0,
    }
    async with serving(settings) as client:
        # Loaded first, so the flood measures sharing, not the model's load.
        status, _ = await client.post("/v1/chat/completions", body, headers=headers("ops"))
        assert status == 200
        flood, trickled = await flood_and_trickle(client, SMOLLM2, body, 4, trickle=2)
        view = await lane_of(client, SMOLLM2)
    check(caplog, SMOLLM2, flood, trickled, view, trickle=2)


async def test_two_floods_filling_the_queue_do_not_lock_out_a_third_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """a and b flood with no line bound of their own and fill the whole queue; ops still gets
    in, in place of the newest request of the longest line, which gets the 429."""
    behave(monkeypatch, answer_delay=1.0)
    limits = Limits(max_concurrency=2, max_queue=4, per_client_queue=0, request_timeout_s=30)
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    refusals: list[tuple[str | None, str]] = []  # (Retry-After, message) of each 429

    async with serving(fake_settings(tmp_path, auth=AUTH, limits=limits)) as client:

        async def flood(name: str) -> None:
            while True:
                async with client.http.post(
                    "/v1/chat/completions", json=body, headers=headers(name)
                ) as resp:
                    answer = await resp.json()
                    if resp.status == 429:
                        message = answer["error"]["message"]
                        refusals.append((resp.headers.get("Retry-After"), message))
                        await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            for name in ("a", "b"):
                for _ in range(6):
                    tg.start_soon(flood, name)
            with anyio.fail_after(30):
                while sum(queued(await lane_of(client, "stub")).values()) < 4:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            status, answer = await client.post("/v1/chat/completions", body, headers=headers("ops"))
            tg.cancel_scope.cancel()
    assert status == 200, answer
    crowded = [retry for retry, message in refusals if "your line in it was the longest" in message]
    assert crowded and all(retry == "2" for retry in crowded)
