"""Log lines carry their syslog priority ("<N>") when stderr is the journal, and only then;
a llama.cpp binary that cannot load a shared library is named with its package."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from backends import toolchain
from gateway.logs import formatter, severity, to_journal


def record(level: int, message: str) -> logging.LogRecord:
    made = logging.makeLogRecord({"levelno": level, "levelname": logging.getLevelName(level)})
    made.msg, made.request_id = message, "-"
    return made


def test_severity_follows_the_level() -> None:
    levels = [logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG]
    assert [severity(level) for level in levels] == [2, 3, 4, 6, 7]


def test_lines_are_prefixed_only_when_stderr_is_the_journal(tmp_path: Path) -> None:
    with (tmp_path / "journal").open("w") as stream, (tmp_path / "other").open("w") as other:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert to_journal(stream, env) and not to_journal(other, env)
        assert not to_journal(stream, {})
        os.environ["JOURNAL_STREAM"] = env["JOURNAL_STREAM"]
        try:
            text, json_lines = formatter("text", stream), formatter("json", stream)
            plain = formatter("text", other)
        finally:
            del os.environ["JOURNAL_STREAM"]
    # Every line of a record keeps its priority: journald stores a traceback line by line.
    line = text.format(record(logging.ERROR, "first\nsecond"))
    assert line.startswith("<3>") and "\n<3>second" in line
    assert json_lines.format(record(logging.WARNING, "w")).startswith('<4>{"ts"')
    assert not plain.format(record(logging.ERROR, "x")).startswith("<")


def test_a_missing_shared_library_is_named_with_its_package() -> None:
    said = (
        "/x/llama-server: error while loading shared libraries: libgomp.so.1: "
        "cannot open shared object file: No such file or directory"
    )
    assert toolchain.load_failure(said) == (
        "the shared library libgomp.so.1 is missing (Debian, Ubuntu: apt-get install libgomp1)"
    )
    assert toolchain.load_failure("error while loading shared libraries: libfoo.so.9: x") == (
        "the shared library libfoo.so.9 is missing"
    )
    assert toolchain.load_failure("version: 1 (abc)") is None
