"""Ids for requests and completions: a random prefix per process and a counter, unique
without a getrandom() call per request (`secrets.token_hex` made two per request)."""

from __future__ import annotations

import itertools
import secrets

_PREFIX = secrets.token_hex(4)
_COUNT = itertools.count()


def unique_id() -> str:
    """16 hex digits, unique within this process (for 2**32 ids) and, by its random prefix,
    almost surely across processes and restarts."""
    return f"{_PREFIX}{next(_COUNT) & 0xFFFFFFFF:08x}"
