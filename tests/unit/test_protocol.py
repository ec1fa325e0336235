"""gateway.protocol's pure parts: its answers in the gateway's error envelope, and the
file-descriptor check."""

from __future__ import annotations

import json
import resource

import pytest

from core.config import Limits
from gateway.metrics import Metrics
from gateway.protocol import Guard, fd_limit_warning


def test_guard_answers_are_the_gateways_error_envelope_and_close() -> None:
    guard = Guard.of(Limits(header_timeout_s=10, max_connections=3), Metrics())
    for (status, raw), code in (
        (guard.header_late, "header_timeout"),
        (guard.body_late, "body_timeout"),
        (guard.refused, "too_many_connections"),
    ):
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert "connection: close" in lines and "content-type: application/json" in lines
        assert f"content-length: {len(body)}" in lines
        error = json.loads(body)["error"]
        assert list(error) == ["type", "code", "message"] and error["code"] == code
        assert status == (503 if code == "too_many_connections" else 408)
    assert "retry-after: 1" in guard.refused[1].decode().split("\r\n")
    assert "10 s ([limits] header_timeout_s)" in guard.header_late[1].decode()


@pytest.mark.parametrize(("soft", "warned"), [(1024, True), (1088, False), (-1, False)])
def test_fd_limit_warning_when_max_connections_leaves_no_headroom(
    monkeypatch: pytest.MonkeyPatch, soft: int, warned: bool
) -> None:
    soft = resource.RLIM_INFINITY if soft == -1 else soft
    monkeypatch.setattr(resource, "getrlimit", lambda _: (soft, resource.RLIM_INFINITY))
    warning = fd_limit_warning(Limits(max_connections=1024))
    assert (warning is not None) == warned
    assert warning is None or "max_connections=1024" in warning
