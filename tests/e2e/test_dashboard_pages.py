"""The dashboard's pages, assets and data endpoints, through Starlette's test client (and,
for the streamed logs, a real uvicorn over the fake llama-server). No browser needed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import anyio
import pytest
from starlette.testclient import TestClient

from core.config import Auth, LlmParams
from gateway.app import create_app
from gateway.routes import ui
from gateway.routes.dashboard import follow
from gateway.routes.openapi import build_document
from supervisor.logtail import LogTail
from tests.e2e.conftest import fake_settings, serving

CSP = "default-src 'self'; img-src 'self' blob: data:"
PAGES = [f"/ui/{path}".rstrip("/") for path in ui.VIEWS]
HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=1">'


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The whole app in cli mode (no llama-server to start), lifespan and all."""
    settings = fake_settings(tmp_path_factory.mktemp("pages"), backend="cli")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href", "action") and v]


def links(html: str) -> list[str]:
    parser = Links()
    parser.feed(html)
    return parser.urls


def test_ui_every_view_renders_with_its_script_and_the_host_in_the_title(
    client: TestClient,
) -> None:
    for path, (view, title) in zip(PAGES, ui.VIEWS.values(), strict=True):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        assert re.search(rf"<title>{title} · [^<]+ · AI Server</title>", response.text)
        assert f'src="/ui/static/{view}.js"' in response.text
        assert "<script>" not in response.text  # no inline script: the CSP forbids it
    assert client.get("/ui/nothing").status_code == 404
    for sneaky in ("/ui/static/..%2Fapp.py", "/ui/static/%2E%2E/routes/ui.py", "/ui/static/x.js"):
        assert client.get(sneaky).status_code == 404, sneaky


def test_the_root_leads_to_the_dashboard_for_get_and_head(client: TestClient) -> None:
    for method in ("GET", "HEAD"):  # Claude Code's first request is HEAD /
        response = client.request(method, "/", follow_redirects=False)
        assert (response.status_code, response.headers["location"]) == (307, "/ui"), method
    assert client.get("/").status_code == 200  # followed: the status page


def test_ui_sends_the_csp_on_every_page_and_asset(client: TestClient) -> None:
    assets = [f"/ui/static/{p.name}" for p in ui.STATIC.iterdir()]
    assert len(assets) >= 8
    for path in [*PAGES, *assets]:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == CSP, path
        assert response.headers["x-content-type-options"] == "nosniff"


def test_ui_no_asset_url_points_outside_the_project(client: TestClient) -> None:
    for page in PAGES:
        for url in links(client.get(page).text):
            assert url.startswith("/ui"), (page, url)
            assert client.get(url).status_code == 200, (page, url)
    for asset in ui.STATIC.iterdir():
        # The SVG namespace is a name, never fetched.
        text = asset.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import", text), asset
        if asset.suffix == ".css":
            assert "url(" not in text, asset


def test_ui_scripts_insert_text_as_text() -> None:
    for script in ui.STATIC.glob("*.js"):
        text = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, (script.name, sink)


def test_ui_escapes_what_it_renders(monkeypatch: pytest.MonkeyPatch, client: TestClient) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: HOSTILE)
    html = client.get("/ui").text
    assert HOSTILE not in html and "<img src=x" not in html
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in html


def test_ui_pages_hold_no_data_and_need_no_key(tmp_path: Path) -> None:
    auth = Auth(api_keys=["user-key"], admin_keys=["admin-key"])
    settings = fake_settings(tmp_path, backend="cli", auth=auth)
    with TestClient(create_app(settings)) as keyed:
        for path in [*PAGES, "/ui/static/common.js"]:
            response = keyed.get(path)
            assert response.status_code == 200, path
            assert "user-key" not in response.text and "stub" not in response.text
        assert keyed.get("/api/config/schema").status_code == 401


def test_config_schema_gives_the_ranges_the_server_validates_with(client: TestClient) -> None:
    schema = client.get("/api/config/schema").json()
    params = schema["llm_params"]
    assert list(params) == list(LlmParams.__struct_fields__)
    assert params["top_p"].items() >= {"exclusiveMinimum": 0, "maximum": 1, "default": 0.9}.items()
    assert params["mirostat"]["enum"] == [0, 1, 2]
    assert [n for n, p in params.items() if p["restarts"]] == [
        "ctx_size", "batch_size", "ubatch_size",
    ]  # fmt: skip
    assert schema["backend"]["enum"] == ["server", "cli"]


@pytest.mark.parametrize(
    ("changes", "param"),
    [({"top_p": 2}, "llm_params.top_p"), ({"batch_size": 64}, "llm_params.batch_size")],
)
def test_a_bad_config_value_is_a_400_naming_its_param(
    client: TestClient, changes: dict[str, object], param: str
) -> None:
    before = client.get("/api/config").json()
    response = client.post("/api/config", json={"llm_params": changes})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request"
    assert client.get("/api/config").json() == before


def test_metrics_history_answers_its_shape(client: TestClient) -> None:
    body = client.get("/api/metrics/history").json()
    assert body["interval_s"] == 10 and isinstance(body["points"], list)


def test_openapi_documents_the_dashboards_endpoints() -> None:
    paths = build_document()["paths"]
    for path in ("/api/whoami", "/api/clients", "/api/config/schema", "/api/metrics/history"):
        assert "get" in paths[path], path
    whoami = paths["/api/whoami"]["get"]["responses"]["200"]["content"]["application/json"]
    assert whoami["schema"]["required"] == ["name", "admin", "keys_required"]
    logs = paths["/api/logs/{name}"]["get"]["responses"]["200"]["content"]
    assert "application/x-ndjson" in logs


async def test_logs_follow_frames_one_json_line_per_log_line() -> None:
    log = LogTail(max_lines=3)
    log.feed("one\ntwo\nthree\nfour\nhalf")  # "one" is gone; "half" is not a line yet
    lines = follow(lambda: log)
    got = [await anext(lines) for _ in range(3)]
    assert all(frame.endswith(b"\n") and frame.count(b"\n") == 1 for frame in got)
    assert [json.loads(frame) for frame in got] == [{"line": t} for t in ("two", "three", "four")]
    log.feed(f" a line\n{HOSTILE}\n")
    with anyio.fail_after(5):
        assert json.loads(await anext(lines)) == {"line": "half a line"}
        assert json.loads(await anext(lines)) == {"line": HOSTILE}
    await lines.aclose()  # type: ignore[attr-defined]


async def test_logs_follow_moves_to_a_replaced_log() -> None:
    logs = [LogTail()]
    logs[0].feed("old\n")
    lines = follow(lambda: logs[-1])
    assert json.loads(await anext(lines)) == {"line": "old"}
    logs.append(LogTail())
    logs[-1].feed("new\n")
    with anyio.fail_after(5):
        assert json.loads(await anext(lines)) == {"line": "new"}
    await lines.aclose()  # type: ignore[attr-defined]


async def test_logs_follow_ends_when_the_gateway_is_stopping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("gateway.routes.dashboard.FOLLOW_WAIT_S", 0.05)
    log, stopping = LogTail(), [False]
    log.feed("one\n")
    lines = follow(lambda: log, lambda: stopping[0])
    assert json.loads(await anext(lines)) == {"line": "one"}
    stopping[0] = True
    with anyio.fail_after(5):
        assert [frame async for frame in lines] == []


async def test_logs_stream_a_llama_servers_output_live(tmp_path: Path) -> None:
    async with serving(fake_settings(tmp_path)) as client:
        for missing in ("/api/logs/nope", "/api/logs/stub?replica=1"):
            async with client.http.get(missing) as resp:
                assert resp.status == 404, missing
        async with client.http.get("/api/logs/stub?replica=x") as resp:
            assert resp.status == 400 and (await resp.json())["error"]["param"] == "replica"
        await client.post("/api/models/stub/load", {})
        async with client.http.get("/api/logs/stub") as resp:
            assert resp.status == 200
            assert resp.headers["content-type"] == "application/x-ndjson"
            seen: list[str] = []
            with anyio.fail_after(10):
                while not any("listening on port" in line for line in seen):
                    raw = await resp.content.readline()
                    assert raw.endswith(b"\n")
                    seen.append(json.loads(raw)["line"])
            assert seen[0].startswith("[ai-server] started pid")


async def test_logs_in_cli_mode_stream_the_models_runs(tmp_path: Path) -> None:
    chat = {"messages": [{"role": "user", "content": "Hi"}]}
    async with serving(fake_settings(tmp_path, backend="cli")) as client:
        for _ in range(2):
            assert (await client.post("/api/chat", chat))[0] == 200
        async with client.http.get("/api/logs/stub") as resp:
            assert resp.status == 200
            seen: list[str] = []
            with anyio.fail_after(10):
                while not any(line.startswith("llama-completion#2: ") for line in seen):
                    seen.append(json.loads(await resp.content.readline())["line"])
    # Each run's lines after its program and run number, the runs in the order they came.
    assert (
        "llama-completion#1: common_perf_print: prompt eval time = 1.00 ms /     7 tokens" in seen
    )
    runs = [line.split(": ", 1)[0] for line in seen]
    assert runs.index("llama-completion#1") < runs.index("llama-completion#2")
