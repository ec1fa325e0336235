"""Golden responses of the /api and /v1 routes, recorded before issue 24 changed how chat
answers flow through the backends: the refactor keeps them, byte for byte where it can.

In each mode (server, cli) every case of golden_cases.py goes to a gateway over the fake
llama binaries, and what comes back (status, some headers, the body: JSON parsed, a stream
as its events, and whether the JSON was written compact or spaced) must equal
tests/golden/fake_<mode>.json with only ids, `created` and the test's temp dir normalised.
Each fault case gets a gateway of its own: a failed request makes the supervisor probe, and
maybe restart, its llama-server, which would change what the next request meets. With the
real default models (marked llama) only the shape is compared, as the text varies:
tests/golden/real_<mode>.json.

After an intended change, record them again and review the diff:

    AI_SERVER_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/e2e/test_golden.py
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from core.config import Limits, Settings
from tests.conftest import write_script
from tests.e2e.conftest import fake_settings, real_settings, serving
from tests.e2e.golden_cases import CASES, FAULTS, JSON, REAL_CASES, TOKENIZE, Case, Fault
from tests.supervisor.conftest import behave

GOLDEN = Path(__file__).parents[1] / "golden"
UPDATE = os.environ.get("AI_SERVER_UPDATE_GOLDEN") == "1"
MODES = ["server", "cli"]
# The response headers a client may act on; x-request-id is normalised.
HEADERS = ("content-type", "retry-after", "allow", "cache-control", "x-accel-buffering")

# ----------------------------------------------------------------------------- recording


def json_style(raw: bytes, parsed: object) -> str:
    """How the JSON was written: a re-encoding shows here even where the values stay."""
    for name, separators in (("compact", (",", ":")), ("spaced", (", ", ": "))):
        if raw == json.dumps(parsed, separators=separators, ensure_ascii=False).encode():
            return name
    return "other"


def stream_record(raw: bytes) -> dict[str, Any]:
    """A server-sent event stream as its events (`data:` payloads parsed, "[DONE]" as it is),
    the distinct shapes of its framing in order, and whatever follows its last blank line."""
    *pieces, tail = raw.split(b"\n\n")
    events: list[object] = []
    framing: list[str] = []
    for piece in pieces:
        payload = piece.removeprefix(b"data: ")
        if payload == piece or b"\n" in payload:
            events.append({"raw": piece.decode()})
            form = "<raw>"
        elif payload == b"[DONE]":
            events.append("[DONE]")
            form = "data: [DONE]\n\n"
        else:
            parsed = json.loads(payload)
            events.append(parsed)
            form = f"data: <{json_style(payload, parsed)} JSON>\n\n"
        if form not in framing:
            framing.append(form)
    record: dict[str, Any] = {"events": events, "framing": framing}
    if tail:
        record["unterminated"] = tail.decode()
    return record


def normalise(value: Any, tmp: str, ids: dict[str, str], key: str | None = None) -> Any:
    """Completion ids to "<id N>", N counting the distinct ids of one response in `ids` (a
    stream's chunks share one), `created` to 0, the test's temp dir to "<tmp>"."""
    if isinstance(value, dict):
        return {k: normalise(v, tmp, ids, k) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v, tmp, ids) for v in value]
    if key == "id" and isinstance(value, str) and value.startswith("chatcmpl-"):
        return ids.setdefault(value, f"<id {len(ids) + 1}>")
    if key == "created" and isinstance(value, int):
        return 0
    if isinstance(value, str):
        return value.replace(tmp, "<tmp>")
    return value


async def exchange(http: aiohttp.ClientSession, case: Case) -> dict[str, Any]:
    """`case` sent; its status, headers and body as the golden file holds them."""
    async with http.request(case.method, case.path, **case.sent()) as resp:
        raw = await resp.read()
        headers = {name: resp.headers[name] for name in HEADERS if name in resp.headers}
        if "x-request-id" in resp.headers:
            headers["x-request-id"] = "<id>"
        got: dict[str, Any] = {"request": case.shown(), "status": resp.status, "headers": headers}
    media = headers.get("content-type", "").split(";")[0]
    if media == "text/event-stream":
        return got | stream_record(raw)
    if media == JSON:
        parsed = json.loads(raw)
        return got | {"body": parsed, "json": json_style(raw, parsed)}
    return got | {"text": raw.decode()}


def golden_settings(path: Path, mode: str, timeout_s: float) -> Settings:
    """Fake llama (and llama-tokenize) in `mode`, in a directory of its own."""
    path.mkdir()
    tokenize = write_script(path / "llama-tokenize", TOKENIZE)
    limits = Limits(request_timeout_s=timeout_s, max_body_bytes=4096)
    settings = fake_settings(path, backend=mode, limits=limits)
    binaries = msgspec.structs.replace(settings.binaries, llama_tokenize=str(tokenize))
    # A llama-server that crashes at every start is waited for through its restarts: one,
    # quickly, so that case's 503 comes within a second.
    llama = msgspec.structs.replace(settings.llama_server, restart_limit=1, backoff_initial_s=0.05)
    return msgspec.structs.replace(settings, binaries=binaries, llama_server=llama)


async def recorded(
    path: Path, mode: str, fault: Fault | None, names: list[str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """The cases `names` sent in order to one gateway (in `mode`, over the fakes behaving as
    `fault` says), by name."""
    behaviour = fault.behaviour if fault else {}
    behave(monkeypatch, **behaviour)
    got: dict[str, Any] = {}
    async with serving(golden_settings(path, mode, fault.timeout_s if fault else 10)) as client:
        for name in names:
            record = await exchange(client.http, CASES[name])
            record = normalise(record, str(path), {})
            got[name] = {"fake_llama": behaviour} | record if fault else record
    return got


# With the real models the text and the counts vary: values become their kind, all but
# these keys' (which say what kind of answer it is).
EXACT = frozenset({"object", "role", "finish_reason", "model", "backend", "index", "type", "code"})


def shape(value: Any, key: str | None = None) -> Any:
    """`value` with every string "<text>", int "<int>" and float "<float>", but EXACT's."""
    if isinstance(value, dict):
        return {k: shape(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    if key in EXACT or value is None or isinstance(value, bool):
        return value
    return {str: "<text>", int: "<int>", float: "<float>"}.get(type(value), value)


def shaped(record: dict[str, Any]) -> dict[str, Any]:
    """The record's body shaped; a stream's events shaped, each run of equal shapes (the
    content deltas) as one."""
    if "events" not in record:
        return record | {"body": shape(record["body"])} if "body" in record else record
    events: list[object] = []
    for event in (e if e == "[DONE]" else shape(e) for e in record["events"]):
        if not events or events[-1] != event:
            events.append(event)
    return record | {"events": events}


# ----------------------------------------------------------------------------- comparing


def dumped(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def golden(name: str) -> Path:
    """tests/golden/`name`.json; a missing one fails the test (before it sends anything)
    unless it is being recorded."""
    path = GOLDEN / f"{name}.json"
    if not UPDATE and not path.exists():
        pytest.fail(f"{path} is missing: record it with AI_SERVER_UPDATE_GOLDEN=1", pytrace=False)
    return path


def check_golden(path: Path, got: dict[str, Any]) -> None:
    """`got` against the golden file `path`, case by case, key order included; written
    instead with AI_SERVER_UPDATE_GOLDEN=1."""
    if UPDATE:
        path.write_text(dumped(got))
        return
    want: dict[str, Any] = json.loads(path.read_text())
    problems = [f"{case}: in {path.name} but no longer sent" for case in want if case not in got]
    for case, record in got.items():
        if case not in want:
            problems.append(f"{case}: not in {path.name}")
        elif (before := dumped(want[case])) != (after := dumped(record)):
            diff = difflib.unified_diff(
                before.splitlines(keepends=True),
                after.splitlines(keepends=True),
                f"{path.name}: {case}",
                f"now: {case}",
            )
            problems.append("".join(diff))
    if problems:
        pytest.fail(
            f"{len(problems)} case(s) differ from {path}; if that is intended, record again "
            "with AI_SERVER_UPDATE_GOLDEN=1 and review the diff\n\n" + "\n".join(problems),
            pytrace=False,
        )


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("mode", MODES)
async def test_golden_fake_responses_are_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    path = golden(f"fake_{mode}")
    got = await recorded(tmp_path / "ok", mode, None, list(CASES), monkeypatch)
    for name, fault in FAULTS[mode].items():
        for case in fault.cases:
            one = await recorded(tmp_path / f"{name}-{case}", mode, fault, [case], monkeypatch)
            got[f"{name}/{case}"] = one[case]
    check_golden(path, got)


@pytest.mark.llama
@pytest.mark.parametrize("mode", MODES)
async def test_golden_real_shapes_are_unchanged(tmp_path: Path, mode: str) -> None:
    path = golden(f"real_{mode}")
    async with serving(real_settings(tmp_path, backend=mode)) as client:
        got = {name: shaped(await exchange(client.http, c)) for name, c in REAL_CASES.items()}
    check_golden(path, got)
