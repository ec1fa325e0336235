"""Ids for requests and completions: 64 random bits from a per-process generator seeded
from the OS, without a getrandom() call per request (`secrets.token_hex` made two per
request). Not a counter: an id must not tell one client how many requests others made."""

from __future__ import annotations

import random
import secrets

_RANDOM = random.Random(secrets.randbits(128))  # noqa: S311 - ids, not secrets


def unique_id() -> str:
    """16 hex digits, almost surely unique across processes and restarts."""
    return f"{_RANDOM.getrandbits(64):016x}"
