"""What the Ollama routes share: durations (`keep_alive`), model names, capabilities."""

from __future__ import annotations

import math

import pytest

from backends.catalog import Catalog, ModelDef
from core.errors import BadRequest, ModelNotFound
from gateway.dialects.ollama_common import capabilities, keep_alive_seconds, resolve, tagged


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (0, 0.0),
        ("0", 0.0),
        (300, 300.0),
        (2.5, 2.5),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("300ms", 0.3),
        ("1.5h", 5400.0),
        ("10s", 10.0),
        (-1, math.inf),
        ("-1m", math.inf),
        ("-1s", math.inf),
    ],
)
def test_keep_alive_reads_ollamas_durations(value: object, seconds: float | None) -> None:
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["5", "soon", "5 m", "", "m", True, [1], {"s": 1}])
def test_keep_alive_refuses_what_ollama_refuses(value: object) -> None:
    with pytest.raises(BadRequest) as caught:
        keep_alive_seconds(value)
    assert caught.value.param == "keep_alive"


CATALOG = Catalog(
    {
        "smol": ModelDef(name="smol", path="/m/smol.gguf", aliases=("tiny",)),
        "odd:latest": ModelDef(name="odd:latest", path="/m/odd.gguf"),
    },
    {"chat": "smol"},
)


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("smol", "smol"),
        ("smol:latest", "smol"),
        ("tiny:latest", "smol"),
        ("odd:latest", "odd:latest"),
    ],
)
def test_names_with_and_without_latest_are_the_same_model(name: str, model: str) -> None:
    assert resolve(CATALOG, name).name == model


def test_unknown_and_missing_names_are_ollamas_errors() -> None:
    with pytest.raises(ModelNotFound, match=r"^model 'smol:7b' not found$"):
        resolve(CATALOG, "smol:7b")
    with pytest.raises(BadRequest, match="model is required"):
        resolve(CATALOG, "")
    assert tagged("smol") == "smol:latest" and tagged("odd:latest") == "odd:latest"


def test_capabilities_follow_the_model_and_its_header() -> None:
    plain = ModelDef(name="a", path="/a.gguf", embeddings=False)
    assert capabilities(plain, {}) == ["completion", "tools"]
    seeing = ModelDef(name="b", path="/b.gguf", mmproj="/p.gguf")
    thinking = {"tokenizer.chat_template": "<think>{{x}}"}
    assert capabilities(seeing, thinking) == [
        "completion", "tools", "vision", "embedding", "thinking"
    ]  # fmt: skip
    # `insert` is read from the file's vocabulary: tests/e2e/test_ollama_fim_real.py
