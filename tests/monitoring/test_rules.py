"""deploy/monitoring as promtool and the blackbox exporter read it: the config and its rules
load, every alert's unit test (tests/monitoring/ai-server.rules.test.yml) passes, and every
alert has one and is documented."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.monitoring.stack import (
    BLACKBOX,
    MISSING,
    MONITORING,
    PROMTOOL,
    RULES,
    RULES_TEST,
    prometheus_config,
    stack_missing,
)

OPERATIONS = Path(__file__).parents[2] / "docs" / "operations.md"


def run(*argv: str | Path) -> str:
    """Run a checker; its output, or the test fails with it when it exits non-zero."""
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{argv[0]} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def alert_names(text: str, key: str) -> set[str]:
    return set(re.findall(rf"^\s*-?\s*{key}: (\w+)\s*$", text, re.MULTILINE))


@pytest.mark.skipif(stack_missing(), reason=MISSING)
def test_promtool_checks_the_config_with_its_rules() -> None:
    out = run(PROMTOOL, "check", "config", MONITORING / "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in out
    assert f"SUCCESS: {len(alert_names(RULES.read_text(), 'alert'))} rules found" in out


@pytest.mark.skipif(stack_missing(), reason=MISSING)
def test_the_config_the_stack_test_runs_is_the_shipped_one_and_valid(tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_config("127.0.0.1:8001", "127.0.0.1:9116", "1s"))
    shutil.copy(RULES, tmp_path / RULES.name)
    run(PROMTOOL, "check", "config", config)
    shipped = (MONITORING / "prometheus.yml").read_text().splitlines()
    changed = [b for a, b in zip(shipped, config.read_text().splitlines(), strict=True) if a != b]
    assert changed == [
        "  scrape_interval: 1s",
        "  evaluation_interval: 1s",
        '      - targets: ["127.0.0.1:8001"]',
        '      - targets: ["http://127.0.0.1:8001/health"]',
        "        replacement: 127.0.0.1:9116",
        '      - targets: ["http://127.0.0.1:8001/ready"]',
    ]


@pytest.mark.skipif(stack_missing(), reason=MISSING)
def test_promtool_checks_the_rules() -> None:
    assert "SUCCESS" in run(PROMTOOL, "check", "rules", RULES)


@pytest.mark.skipif(stack_missing(), reason=MISSING)
def test_the_rules_pass_their_unit_tests() -> None:
    assert "SUCCESS" in run(PROMTOOL, "test", "rules", RULES_TEST)


@pytest.mark.skipif(stack_missing(), reason=MISSING)
def test_the_blackbox_exporter_loads_the_modules() -> None:
    config = MONITORING / "blackbox.yml"
    assert "Config file is ok" in run(BLACKBOX, "--config.check", f"--config.file={config}")


def test_every_alert_has_a_unit_test_and_a_line_in_the_docs() -> None:
    alerts = alert_names(RULES.read_text(), "alert")
    assert len(alerts) == 10
    assert alert_names(RULES_TEST.read_text(), "alertname") == alerts
    docs = OPERATIONS.read_text()
    assert not {name for name in alerts if f"`{name}`" not in docs}
