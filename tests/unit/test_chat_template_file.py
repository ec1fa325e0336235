"""`chat_template_file`: a model's Jinja template read from a file at startup."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.catalog import build_catalog
from core.config import ConfigError, load_settings

HERMES = Path(__file__).parents[2] / "deploy" / "templates" / "hermes-tools.jinja"


def catalog_toml(tmp_path: Path, body: str) -> str:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    path = tmp_path / "config.toml"
    path.write_text(f'cache_dir = "{tmp_path / "cache"}"\n[models.m]\npath = "{model}"\n{body}')
    return str(path)


def test_chat_template_file_is_the_models_template(tmp_path: Path) -> None:
    path = catalog_toml(tmp_path, f'chat_template_file = "{HERMES}"\n')
    catalog = build_catalog(load_settings(Path(path), env={}))
    assert catalog.models["m"].chat_template == HERMES.read_text()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('chat_template_file = "/nope.jinja"\n', "chat_template_file /nope.jinja"),
        (f'chat_template = "chatml"\nchat_template_file = "{HERMES}"\n', "set one"),
    ],
)
def test_chat_template_file_errors_name_the_problem(
    tmp_path: Path, body: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_catalog(load_settings(Path(catalog_toml(tmp_path, body)), env={}))
