"""The model pool: what a model switch costs, and what naming a model costs on the hot path.

Switch time, with both real built-in models: the memory budget fits only one of them (the
larger of the two estimates /api/models shows, plus 16 MB; gemma at ubatch_size 256, see
GEMMA_UBATCH), and requests alternate between smollm2 (/v1/chat/completions, max_tokens 1)
and gemma (/v1/embeddings). In the same run, in
every round: a cold load (both models unloaded first, nothing to evict), the same request with
its model loaded (warm), and the switches (the other model loaded and idle: evict it, load,
answer). The gateway's own `ai_server_model_load_seconds` (spawn to READY) after each load
splits the load from the rest; the rest of a switch less the rest of a cold load is the
eviction (both include a fresh llama-server's slower first request), set beside an unload
timed directly (POST /api/models/NAME/unload answers once the process has exited).

Name lookup: against the instant stub upstream (bench/stub_llama.py, as bench/throughput.py
does), wrk drives the same /v1/embeddings request without `model`, with the canonical name
and with an alias, rounds rotating the order; the ratio is of medians. Then, more sensitive
to a small difference, the three one request at a time, interleaved. In process, timeit
gives the lookup itself, `Catalog.resolve` + `backends.specs.server_spec`, to set beside the
gateway's time per request (1 / req/s)."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
import timeit
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

from backends.catalog import GEMMA, SMOLLM2, build_catalog
from backends.specs import server_spec
from bench.common import ROOT, Machine, gateway, write_section
from bench.throughput import CONNECTIONS, SECONDS, wrk
from core.config import Settings

SWITCH_ROUNDS = 4  # each: a cold load, then two switches; the first model alternating
WARM = 3  # warm requests after each load
LOOKUP_ROUNDS = 6  # wrk runs per variant, the order rotating
LATENCY_WARMUP, LATENCY_ROUNDS = 100, 1500  # one request of each variant per round
CONTROL = "control"
CHAT: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
# Each model's request: (path, body without `model`).
REQUESTS = {SMOLLM2: ("/v1/chat/completions", CHAT), GEMMA: ("/v1/embeddings", {"input": "Hi"})}
# gemma's estimate counts the logits of a full ubatch for embeddings, 262144 x ubatch floats
# in the output and the compute buffer: 2 GiB at the default 1024 makes its estimate larger
# than smollm2's estimate plus gemma's measured memory, so no budget could hold one and not
# both. At 256 it can.
GEMMA_UBATCH = f"[models.{GEMMA}]\nubatch_size = 256\n"


def call(url: str, body: dict[str, Any] | None = None, method: str = "POST") -> tuple[float, bytes]:
    """(seconds, answer) of one request; urllib raises on an answer that is not 2xx."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data, headers, method=method)  # noqa: S310
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as resp:  # noqa: S310
        answer: bytes = resp.read()
    return time.perf_counter() - started, answer


def metrics(url: str) -> dict[tuple[str, str], float]:
    """(metric name, model label) -> value, from /metrics."""
    _, text = call(url + "/metrics", method="GET")
    values = {}
    for line in text.decode().splitlines():
        if found := re.match(r"(\w+)(?:\{(.*)\})? (\S+)$", line):
            model = re.search(r'model="([^"]*)"', found.group(2) or "")
            values[found.group(1), model.group(1) if model else ""] = float(found.group(3))
    return values


def models(url: str) -> dict[str, dict[str, Any]]:
    """/api/models, by name."""
    _, text = call(url + "/api/models", method="GET")
    return {m["name"]: m for m in json.loads(text)["models"]}


def statuses(url: str) -> dict[str, str]:
    return {name: m["status"] for name, m in models(url).items()}


def estimates() -> dict[str, int]:
    """Both models' memory estimates as /api/models shows them before any load (cli mode
    loads nothing, and shows the same estimate)."""
    with gateway("cli", extra=GEMMA_UBATCH) as gw:
        shown = models(gw.url)
    assert all(shown[n]["memory_source"] == "estimate" for n in REQUESTS), shown
    return {n: int(shown[n]["memory_mb"]) for n in REQUESTS}


class Timed(NamedTuple):
    seconds: float  # the request, as its client saw it
    load_seconds: float  # the gateway's figure for the load the request caused; 0 if none
    swaps: float  # ai_server_model_swaps_total's increase over the request


class Switches:
    """Requests to one gateway under a budget for one model, and their times."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.cold: dict[str, list[Timed]] = {n: [] for n in REQUESTS}
        self.switch: dict[str, list[Timed]] = {n: [] for n in REQUESTS}
        self.warm: dict[str, list[float]] = {n: [] for n in REQUESTS}
        self.unload: dict[str, list[float]] = {n: [] for n in REQUESTS}

    def unload_all(self) -> None:
        """Unload both models, timing the unload of the one loaded: the stop an eviction
        makes (SIGTERM to its group, answered once it has exited)."""
        loaded = [n for n, status in statuses(self.url).items() if status == "loaded"]
        for name in REQUESTS:
            seconds, _ = call(f"{self.url}/api/models/{name}/unload")
            if name in loaded:
                self.unload[name].append(seconds)

    def round(self, first: str) -> None:
        """From nothing loaded: `first` (cold), the other (a switch), `first` (a switch)."""
        second = next(n for n in REQUESTS if n != first)
        self.unload_all()
        self._load(first, self.cold, swaps=0)
        self._load(second, self.switch, swaps=1)
        self._load(first, self.switch, swaps=1)

    def _load(self, model: str, into: dict[str, list[Timed]], swaps: int) -> None:
        timed = self._request(model)
        assert timed.load_seconds > 0, (model, timed)
        if timed.swaps != swaps:
            raise RuntimeError(
                f"loading {model} made {timed.swaps:.0f} swaps, not {swaps}: the pool counts a "
                "loaded model's measured memory and the other's estimate, and those fit the "
                f"budget together: {models(self.url)}"
            )
        others = {n: s for n, s in statuses(self.url).items() if n != model}
        assert set(others.values()) == {"unloaded"}, others  # the other model was evicted
        into[model].append(timed)
        for _ in range(WARM):
            warm = self._request(model)
            assert warm.load_seconds == 0 and warm.swaps == 0, (model, warm)
            self.warm[model].append(warm.seconds)

    def _request(self, model: str) -> Timed:
        before = metrics(self.url)
        path, body = REQUESTS[model]
        seconds, _ = call(self.url + path, body | {"model": model})
        after = metrics(self.url)
        loads = ("ai_server_model_loads_total", model)
        loaded = after[loads] > before.get(loads, 0)
        swaps = ("ai_server_model_swaps_total", "")
        return Timed(
            seconds,
            after["ai_server_model_load_seconds", model] if loaded else 0.0,
            after[swaps] - before[swaps],
        )


def ms(values: list[float]) -> float:
    """The median, ms."""
    return statistics.median(values) * 1000


def switch_figures() -> list[str]:
    estimate = estimates()
    budget = max(estimate.values()) + 16
    with gateway(extra=f"[pool]\nmemory_budget_mb = {budget}\n{GEMMA_UBATCH}") as gw:
        held = models(gw.url)[GEMMA]["memory_mb"]  # loaded at startup: measured
        if held + estimate[SMOLLM2] <= budget:
            print(f"bench.pool: no switch to measure under {budget} MB", file=sys.stderr)
            return [
                f"**Model switch**: not measured. A budget of {budget} MB (the larger "
                f"estimate + 16 MB; estimates {estimate[SMOLLM2]} MB smollm2, "
                f"{estimate[GEMMA]} MB gemma) holds both: the pool counts gemma, loaded, at "
                f"its measured {held} MB, and smollm2 at its estimate, {held} + "
                f"{estimate[SMOLLM2]} MB <= {budget} MB, so loading smollm2 evicts nothing.",
            ]
        bench = Switches(gw.url)
        for i in range(SWITCH_ROUNDS):
            bench.round(list(REQUESTS)[i % 2])
        bench.unload_all()
        swaps_total = metrics(gw.url)["ai_server_model_swaps_total", ""]
    rows, splits = [], []
    for model, (path, _) in REQUESTS.items():
        other = next(n for n in REQUESTS if n != model)
        warm, unload = ms(bench.warm[model]), ms(bench.unload[other])
        cold, switch = bench.cold[model], bench.switch[model]
        cold_ms, switch_ms = ms([t.seconds for t in cold]), ms([t.seconds for t in switch])
        rows.append(
            f"| {model} `{path}` | {warm:.1f} | {cold_ms:.0f} ({len(cold)}) | "
            f"{switch_ms:.0f} ({len(switch)}) | {unload:.0f} ({len(bench.unload[other])}) | "
            f"**{switch_ms / cold_ms:.2f}x** | {switch_ms / (unload + cold_ms):.2f}x | "
            f"{switch_ms / warm:.0f}x |"
        )
        # Neither the load nor a warm request's time: for a cold load, what a fresh
        # llama-server's first request costs more; for a switch, that and the eviction.
        rest_cold, rest_switch = (
            ms([t.seconds - t.load_seconds for t in timed]) - warm for timed in (cold, switch)
        )
        splits.append(
            f"| {model} | {ms([t.load_seconds for t in cold]):.0f} | "
            f"{ms([t.load_seconds for t in switch]):.0f} | {rest_cold:.0f} | "
            f"{rest_switch:.0f} | {rest_switch - rest_cold:.0f} | {unload:.0f} |"
        )
    n_switch = sum(len(v) for v in bench.switch.values())
    return [
        f"**Model switch** (both built-in models on llama-server, gemma at ubatch_size 256: "
        "at 1024 its embeddings logits (2 GiB) put its estimate above smollm2's estimate "
        "plus gemma's measured memory, and no budget held one and not both; budget "
        f"{budget} MB = the larger estimate + 16 MB, estimates "
        f"{estimate[SMOLLM2]} MB smollm2, {estimate[GEMMA]} MB gemma; {SWITCH_ROUNDS} rounds "
        "from nothing loaded: a cold "
        f"load, a switch, a switch back, the first model alternating; {WARM} warm requests "
        "after each load; ms, median (samples))",
        "",
        "| request (model named) | warm | cold load | switch: evict + load | unload of the "
        "other | switch / cold | switch / (unload + cold) | switch / warm |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Split by the gateway's own `ai_server_model_load_seconds` (spawn to READY). The rest "
        "is the request's time outside the load, less a warm request's: for a cold load, "
        "what a fresh llama-server's first request costs more (and the actor's steps); for a "
        "switch, that and the eviction (SIGTERM to the other model, its exit). Their "
        "difference is the eviction, to set beside the other model's unload, timed directly.",
        "",
        "| model | load, cold | load, switch | rest, cold | rest, switch | rest, switch - cold "
        "| unload of the other |",
        "|---|---|---|---|---|---|---|",
        *splits,
        "",
        f"`ai_server_model_swaps_total` at the end: {swaps_total:.0f} ({n_switch} switches).",
    ]


def lua(body: str) -> str:
    return f"""wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
"""


def lookup_ns(variants: dict[str, str | None]) -> dict[str, float]:
    """ns per `server_spec(catalog.resolve(name, "embedding"), params)`, best of 7."""
    settings = Settings()
    catalog, params = build_catalog(settings), settings.llm_params
    result = {}
    for label, name in variants.items():
        timer = timeit.Timer(
            "server_spec(catalog.resolve(name, 'embedding'), params)",
            globals={
                "server_spec": server_spec,
                "catalog": catalog,
                "name": name,
                "params": params,
            },
        )
        number, _ = timer.autorange()
        result[label] = min(timer.repeat(7, number)) / number * 1e9
    return result


def rotated(labels: list[str], i: int) -> list[str]:
    return labels[i % len(labels) :] + labels[: i % len(labels)]


def interleaved(url: str, bodies: dict[str, bytes]) -> dict[str, list[float]]:
    """Latency of each body's request, one at a time on one keep-alive connection, the
    variants interleaved (the order rotating); the warm-up rounds left out. Seconds."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    times: dict[str, list[float]] = {label: [] for label in bodies}
    headers = {"Content-Type": "application/json"}
    try:
        for i in range(LATENCY_WARMUP + LATENCY_ROUNDS):
            for label in rotated(list(bodies), i):
                started = time.perf_counter()
                connection.request("POST", parts.path, bodies[label], headers)
                answer = connection.getresponse()
                answer.read()
                assert answer.status == 200, answer.status
                if i >= LATENCY_WARMUP:
                    times[label].append(time.perf_counter() - started)
    finally:
        connection.close()
    return times


def stub_runs(
    variants: dict[str, str | None],
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Through a gateway in front of the stub, each variant's /v1/embeddings request: req/s
    per wrk round (each round runs every variant once, the order rotating), then latencies
    one request at a time, interleaved."""
    rates: dict[str, list[float]] = {label: [] for label in variants}
    bodies = {
        label: json.dumps({"input": "Hi"} | ({} if name is None else {"model": name})).encode()
        for label, name in variants.items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        scripts = {label: Path(tmp) / f"{i}.lua" for i, label in enumerate(variants)}
        for label, script in scripts.items():
            script.write_text(lua(bodies[label].decode()))
        stub = Path(tmp) / "llama-server"  # what the gateway's supervisor starts
        stub.write_text(f'#!/bin/sh\nexec {sys.executable} {ROOT}/bench/stub_llama.py "$@"\n')
        stub.chmod(0o755)
        with gateway(extra=f'[binaries]\nllama_server = "{stub}"\n') as gw:
            url = gw.url + "/v1/embeddings"
            wrk(url, scripts[next(iter(scripts))])  # warm up
            for i in range(LOOKUP_ROUNDS):
                for label in rotated(list(variants), i):
                    rates[label].append(wrk(url, scripts[label])[0])
            # The control: the first request once more, against itself (the noise floor).
            first = next(iter(bodies))
            latencies = interleaved(url, bodies | {CONTROL: bodies[first]})
    return rates, latencies


def lookup_figures() -> list[str]:
    alias = build_catalog(Settings()).models[GEMMA].aliases[0]
    variants: dict[str, str | None] = {"no `model`": None, f"`{GEMMA}`": GEMMA, f"`{alias}`": alias}
    rates, latencies = stub_runs(variants)
    micro = lookup_ns(variants)
    base = rates["no `model`"]

    def added_us(label: str) -> float:
        """Median of the per-round differences to no `model`, us."""
        pairs = zip(latencies[label], latencies["no `model`"], strict=True)
        return statistics.median(a - b for a, b in pairs) * 1e6

    per_request_ns = 1e9 / statistics.median(base)
    rows = []
    for label, rounds in rates.items():
        paired = [r / b for r, b in zip(rounds, base, strict=True)]
        rows.append(
            f"| {label} | {statistics.median(rounds):.0f} | "
            f"{', '.join(f'{r:.0f}' for r in rounds)} | "
            f"**{statistics.median(rounds) / statistics.median(base):.3f}x** | "
            f"{min(paired):.2f}-{max(paired):.2f} | {ms(latencies[label]) * 1000:.0f} "
            f"({added_us(label):+.0f}) | {micro[label]:.0f} | "
            f"{micro[label] / per_request_ns * 100:.3f}% |"
        )
    return [
        f"**Model name lookup on the hot path** (instant stub upstream; wrk, {CONNECTIONS} "
        f"connections, {LOOKUP_ROUNDS} rounds of {SECONDS} s per variant, order rotating; "
        f"/v1/embeddings, one short text; then {LATENCY_ROUNDS} requests of each, one at a "
        "time, interleaved. The lookup, `server_spec(catalog.resolve(name, role), params)`, "
        "timed in process with timeit, best of 7)",
        "",
        "| `model` in the body | req/s median | rounds | ratio to no `model` | per-round "
        "ratios | latency p50, us (paired difference) | lookup, ns | of the time per request |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Time per request through the gateway (1 / req/s, no `model`): "
        f"{per_request_ns / 1000:.0f} us. A request without `model` makes the same call "
        "(its role's model), so naming a model adds the difference between the rows, not "
        "the whole lookup. Paired difference: the median over rounds of a request's latency "
        "less that of the request without `model` in the same round; the control, that "
        f"request again in every round, differs from itself by {added_us(CONTROL):+.0f} us.",
    ]


def main() -> int:
    if shutil.which("wrk") is None:
        print("wrk is not installed: `make bench` installs Debian's package", file=sys.stderr)
        return 1
    machine = Machine()
    lines = switch_figures()
    lines += ["", *lookup_figures(), "", machine.line()]
    write_section("pool", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
