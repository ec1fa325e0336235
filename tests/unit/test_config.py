from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ConfigError, LlmParams, Settings, load_settings

SEED_DEFAULTS = {
    "ctx_size": 12192,
    "temp": 0.35,
    "top_p": 0.9,
    "top_k": 40,
    "presence_penalty": 0.2,
    "mirostat": 0,
    "batch_size": 8192,
    "ubatch_size": 1024,
}


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_llm_params_defaults_are_the_seed_table() -> None:
    import msgspec

    assert msgspec.to_builtins(LlmParams()) == SEED_DEFAULTS


def test_load_settings_without_file_gives_defaults() -> None:
    assert load_settings(None, env={}) == Settings()


def test_load_settings_reads_toml(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        'backend = "cli"\nport = 9000\n[llm_params]\ntemp = 0.7\n[llama_server]\nport = 8090\n',
    )
    settings = load_settings(path, env={})
    assert (settings.backend, settings.port, settings.llm_params.temp) == ("cli", 9000, 0.7)
    assert settings.llama_server.port == 8090
    assert settings.llm_params.top_k == 40


def test_load_settings_uses_env_variable(tmp_path: Path) -> None:
    path = write_config(tmp_path, "port = 9001\n")
    assert load_settings(None, env={"AI_SERVER_CONFIG": str(path)}).port == 9001


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("colour = 1\n", "colour"),
        ("[llm_params]\ntemprature = 0.5\n", "temprature"),
        ("[llm_params]\ntop_p = 1.5\n", "llm_params.top_p"),
        ("[llm_params]\nmirostat = 3\n", "llm_params.mirostat"),
        ("[llm_params]\nctx_size = 0\n", "llm_params.ctx_size"),
        ("[llm_params]\nubatch_size = 9000\n", "ubatch_size"),
        ('backend = "gpu"\n', "backend"),
        ('port = "x"\n', "port"),
    ],
)
def test_load_settings_rejects_bad_config_naming_the_key(
    tmp_path: Path, text: str, named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(write_config(tmp_path, text), env={})


def test_load_settings_unreadable_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_settings(tmp_path / "missing.toml", env={})


def test_the_example_config_is_valid_and_shows_the_defaults() -> None:
    example = Path(__file__).parents[2] / "deploy" / "config.example.toml"
    assert load_settings(example, env={}) == Settings()
