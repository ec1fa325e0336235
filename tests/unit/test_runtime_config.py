from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from core.config import ConfigError, LlmParams, RuntimeConfig, Settings
from core.errors import BadRequest
from gateway.runtime_config import ConfigStore, merged, save
from gateway.schemas import ConfigUpdate

CURRENT = RuntimeConfig(backend="server", llm_params=LlmParams())


def update(**fields: object) -> ConfigUpdate:
    return msgspec.convert(fields, ConfigUpdate)


def test_merged_applies_a_partial_update() -> None:
    new = merged(CURRENT, update(llm_mode="cli", llm_params={"temp": 0.7, "top_k": 3}))
    assert new.backend == "cli"
    assert new.llm_params == msgspec.structs.replace(LlmParams(), temp=0.7, top_k=3)


def test_merged_validates_the_whole_result() -> None:
    low_batch = merged(CURRENT, update(llm_params={"ubatch_size": 512}))
    with pytest.raises(BadRequest, match="`ubatch_size` must not exceed `batch_size`"):
        merged(low_batch, update(llm_params={"batch_size": 256}))


def test_merged_rejects_bools_and_strings_for_numbers() -> None:
    with pytest.raises(BadRequest, match=r"llm_params\.top_k"):
        merged(CURRENT, update(llm_params={"top_k": True}))
    with pytest.raises(BadRequest, match=r"llm_params\.temp"):
        merged(CURRENT, update(llm_params={"temp": "0.5"}))


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"top_p": 2}, "llm_params.top_p"),
        ({"top_k": "x"}, "llm_params.top_k"),
        ({"temp": 0.5, "mirostat": 3}, "llm_params.mirostat"),
        ({"typo": 1}, "llm_params.typo"),
        ({"ubatch_size": 9000}, "llm_params.ubatch_size"),
        ({"batch_size": 512}, "llm_params.batch_size"),
    ],
)
def test_merged_names_the_field_at_fault_as_param(changes: dict[str, object], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        merged(CURRENT, update(llm_params=changes))
    assert caught.value.param == param
    assert param.removeprefix("llm_params.") in caught.value.message


def test_store_reloads_what_was_saved(tmp_path: Path) -> None:
    settings = Settings(state_dir=str(tmp_path))
    assert ConfigStore.open(settings).current == CURRENT
    saved = RuntimeConfig(backend="cli", llm_params=LlmParams(temp=1.0))
    save(tmp_path / "config.json", saved)
    assert ConfigStore.open(settings).current == saved


def test_store_refuses_a_corrupt_saved_config_naming_it(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"backend": "gpu"}')
    with pytest.raises(ConfigError, match=r"config\.json is unusable"):
        ConfigStore.open(Settings(state_dir=str(tmp_path)))
