"""The `ai-server` command: `serve` runs the gateway, `doctor` checks the machine."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from gateway import logs
from gateway.app import create_app
from gateway.config import ConfigError, Settings, load_settings
from gateway.doctor import run_doctor


def serve(settings: Settings) -> int:
    logs.configure(settings.logging.format, settings.logging.level)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=None,
        timeout_graceful_shutdown=settings.limits.shutdown_grace_s,
    )
    uvicorn.Server(config).run()
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ai-server", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "run the gateway"),
        ("doctor", "check binaries, models, ports"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--config", help="TOML config file (default: $AI_SERVER_CONFIG)")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        if args.command == "doctor":
            return run_doctor(settings)
        return serve(settings)
    except ConfigError as exc:
        print(f"ai-server: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
