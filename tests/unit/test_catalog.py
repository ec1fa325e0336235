"""The model catalog from config files: named models, old keys, models_dir, and the startup
errors that name the problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backends.catalog import GEMMA, SMOLLM2, Catalog, build_catalog
from core.config import ConfigError, load_settings
from core.errors import ModelNotFound
from gateway.errors import status_of


def catalog_of(tmp_path: Path, toml: str) -> Catalog:
    path = tmp_path / "config.toml"
    path.write_text(f'cache_dir = "{tmp_path / "cache"}"\n{toml}')
    return build_catalog(load_settings(path, env={}))


def gguf(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(b"GGUF")  # the catalog only needs the file to exist
    return path


def test_catalog_defaults_are_the_two_built_in_models(tmp_path: Path) -> None:
    catalog = catalog_of(tmp_path, "")
    assert sorted(catalog.models) == [GEMMA, SMOLLM2]
    assert catalog.roles == {"chat": SMOLLM2, "embedding": GEMMA, "vision": GEMMA}
    gemma = catalog.models[GEMMA]
    assert gemma.chat_template == "gemma" and gemma.mmproj and gemma.source == "built-in"
    assert catalog.models[SMOLLM2].chat_template is None  # its GGUF's own template
    # gemma keeps the name responses carried before, as an alias.
    assert catalog.resolve("gemma-3-270m-q4_k_m", "chat") is gemma
    assert catalog.resolve(None, "embedding") is gemma


def test_catalog_named_models_aliases_roles_and_overrides(tmp_path: Path) -> None:
    model = gguf(tmp_path, "q.gguf")
    catalog = catalog_of(
        tmp_path,
        f'[models."qwen2.5-7b"]\npath = "{model}"\naliases = ["gpt-4o-mini"]\nctx_size = 4096\n'
        "ttl_s = 0\npinned = true\nembeddings = false\n"
        '[models.gemma-3-270m]\nttl_s = 30\n[roles]\nchat = "gpt-4o-mini"\n'
        "[llama_server]\nidle_unload_s = 600\n",
    )
    qwen = catalog.resolve("gpt-4o-mini", "chat")
    assert qwen.name == "qwen2.5-7b" and qwen.ctx_size == 4096 and qwen.pinned
    assert qwen.ttl_s is None and not qwen.embeddings  # ttl_s 0: never unloaded
    assert catalog.resolve(None, "chat") is qwen
    # A redefined built-in keeps its file, template and alias; it takes the new TTL.
    gemma = catalog.models[GEMMA]
    assert gemma.ttl_s == 30 and gemma.chat_template == "gemma" and gemma.source == "built-in"
    assert catalog.models[SMOLLM2].ttl_s == 600  # the default TTL: idle_unload_s


def test_catalog_unknown_model_lists_the_names(tmp_path: Path) -> None:
    catalog = catalog_of(tmp_path, "")
    with pytest.raises(ModelNotFound, match="smollm2-135m-instruct") as caught:
        catalog.resolve("no-such-model", "chat")
    assert status_of(caught.value) == 404 and caught.value.param == "model"
    assert caught.value.code == "model_not_found"


def test_catalog_old_keys_keep_their_meaning(tmp_path: Path) -> None:
    chat, vision, projector = (gguf(tmp_path, n) for n in ("c.gguf", "v.gguf", "p.gguf"))
    catalog = catalog_of(
        tmp_path,
        f'[models]\nchat = "{chat}"\nvision = "{vision}"\nmmproj = "{projector}"\n'
        'chat_template = "chatml"\n',
    )
    assert catalog.roles == {"chat": "c", "embedding": GEMMA, "vision": "v"}
    assert catalog.models["c"].chat_template == "chatml"
    assert catalog.models["v"].mmproj == str(projector)


def test_catalog_models_dir_pairs_projectors_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("llava.gguf", "mmproj-llava.gguf", "phi.gguf", "notes.txt"):
        gguf(folder, name)
    catalog = catalog_of(tmp_path, f'[pool]\nmodels_dir = "{folder}"\n')
    assert {"llava", "phi"} <= set(catalog.models) and "mmproj-llava" not in catalog.models
    assert catalog.models["llava"].mmproj == str(folder / "mmproj-llava.gguf")
    assert catalog.models["phi"].mmproj is None


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[models.x]\nbogus = 1\n", "unknown field `bogus`"),
        ('[models.x]\npath = "/nope.gguf"\n', "/nope.gguf does not exist"),
        ("[models.x]\nttl_s = 5\n", r"\[models.x\] needs `path`"),
        ('[models]\nx = "/a.gguf"\n', "a named model is a table"),
        ('[models.chat]\npath = "{m}"\n', "reserved name"),
        ('[models.a]\npath = "{m}"\naliases = ["gemma-3-270m"]\n', "used by both"),
        ('[roles]\nchat = "nobody"\n', "names no model"),
        ('[models]\nchat = "{m}"\n[roles]\nembedding = "gemma-3-270m"\n', r"\[models.m\]\npath"),
    ],
)
def test_catalog_startup_errors_name_the_problem(tmp_path: Path, toml: str, message: str) -> None:
    model = gguf(tmp_path, "m.gguf")
    with pytest.raises(ConfigError, match=message):
        catalog_of(tmp_path, toml.replace("{m}", str(model)))


def test_catalog_instances_replicas_remotes_and_rpc_workers(tmp_path: Path) -> None:
    key_file = tmp_path / "remote.key"
    key_file.write_text("s3cret-from-file\n")
    model = gguf(tmp_path, "big.gguf")
    catalog = catalog_of(
        tmp_path,
        f'[models.big]\npath = "{model}"\nreplicas = 2\nrpc_workers = ["10.0.0.5:50052"]\n'
        '[[models.big.remote]]\nurl = "http://10.0.0.7:8080/"\n'
        f'api_key_file = "{key_file}"\nweight = 3\n'
        '[models.far]\nreplicas = 0\n[[models.far.remote]]\nurl = "http://10.0.0.8:8080"\n'
        'api_key = "inline-key"\n',
    )
    big = catalog.models["big"]
    assert big.replicas == 2 and big.rpc_workers == ("10.0.0.5:50052",)
    assert big.gpu_layers == 999  # every layer on the workers unless told otherwise
    (remote,) = big.remotes
    assert (remote.url, remote.api_key, remote.weight) == (
        "http://10.0.0.7:8080",
        "s3cret-from-file",
        3,
    )
    far = catalog.models["far"]
    assert far.replicas == 0 and far.path == "" and far.remotes[0].api_key == "inline-key"
    # Keys never leave in what the gateway shows.
    shown = str([big.public(), far.public()])
    assert "s3cret" not in shown and "inline-key" not in shown and "***" in shown


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[models.x]\nreplicas = 0\n", "needs [[models.x.remote]]"),
        (
            '[models.x]\nreplicas = 0\n[[models.x.remote]]\nurl = "10.0.0.1:8080"\n',
            "url must be http://",
        ),
        (
            '[models.x]\nreplicas = 0\n[[models.x.remote]]\nurl = "http://h:1"\n'
            'api_key = "a"\napi_key_file = "/k"\n',
            "not both",
        ),
        (
            '[models.x]\nreplicas = 0\n[[models.x.remote]]\nurl = "http://h:1"\n'
            'api_key_file = "/nonexistent/key"\n',
            "cannot read key file /nonexistent/key",
        ),
        ('[models.gemma-3-270m]\nrpc_workers = ["nohost"]\n', "'nohost' is not HOST:PORT"),
        ("[models.gemma-3-270m]\ngpu_layers = 10\n", "name them"),
    ],
)
def test_catalog_instance_errors_name_the_problem(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        catalog_of(tmp_path, toml)
