"""Fill-in-the-middle on real llama.cpp: llama-server's /infill answers a model with FIM
tokens (tests.fim_model's copy of SmolLM2, in each of the three ways llama.cpp finds
them) and refuses one without (SmolLM2 itself); the prompt it builds is, as text,
`FimModel.infill_text`, and llama-completion on that text generates the same answer."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from backends.cli import END_OF_TEXT
from backends.cli_args import completion_argv
from backends.gguf_meta import read_meta
from core.config import LlmParams
from tests.fim_model import FimModel, Way, write_fim_model
from tests.integration.conftest import running_llama_server

pytestmark = pytest.mark.llama

# A backslash escape in the code: llama-completion must read it as it is (--no-escape).
PREFIX = 'def add(a, b):\n    """Add, e.g. print(f"{add(1, 2)}\\n")."""\n    return'
SUFFIX = "\n"
N_PREDICT = 12
SEED = 42
# Greedy: the same tokens from llama-server and llama-completion. Small sizes keep the
# two runs cheap; n_ctx > n_batch + 2 lets /infill put its repo line in (infill_text).
PARAMS = LlmParams(
    ctx_size=2048, batch_size=512, ubatch_size=512, temp=0.0, top_k=1, presence_penalty=0.0
)
INFILL = {
    "input_prefix": PREFIX,
    "input_suffix": SUFFIX,
    "n_predict": N_PREDICT,
    "temperature": 0.0,
    "top_k": 1,
    "seed": SEED,
    "cache_prompt": False,
}


@pytest.fixture(scope="session")
def fim_models(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[Way, FimModel]:
    tmp = tmp_path_factory.mktemp("fim")
    return {way: write_fim_model(smollm2, tmp, way) for way in ("names", "keys", "legacy_keys")}


async def complete(llama_bin: Path, model: Path, prompt: str, tmp: Path) -> str:
    """The text llama-completion generates on `prompt`, run as cli mode runs it (its argv,
    with --no-escape: a prompt file is otherwise unescaped, a `\\n` in code becomes a
    newline). After the text it prints " [end of text]\\n" at an end of generation, then
    "\\n\\n" in every case."""
    prompt_file = tmp / "prompt.txt"
    prompt_file.write_text(prompt + "\n")  # --file drops one trailing newline
    argv = completion_argv(
        str(llama_bin / "llama-completion"), str(model), str(prompt_file), PARAMS, N_PREDICT,
        seed=SEED,
    )  # fmt: skip
    done = await anyio.run_process(argv)
    return done.stdout.decode().removesuffix("\n\n").removesuffix(END_OF_TEXT + "\n")


@pytest.mark.parametrize("way", ["names", "keys", "legacy_keys"])
async def test_infill_of_a_fim_model_answers_as_llama_completion_on_its_text(
    way: Way, fim_models: dict[Way, FimModel], llama_bin: Path, tmp_path: Path
) -> None:
    model = fim_models[way]
    expected_prompt = model.infill_text(PREFIX, SUFFIX)
    async with running_llama_server(
        llama_bin, model.path, embeddings=False, chat_template=None, params=PARAMS
    ) as server:
        answer = await server.post("/infill", INFILL)
        tokens = await server.post("/tokenize", {"content": expected_prompt})
    content = answer["content"]
    assert isinstance(content, str) and content
    assert answer["stop"] is True and 0 < answer["tokens_predicted"] <= N_PREDICT  # type: ignore[operator]
    assert isinstance(answer["timings"], dict)
    # The prompt /infill built, detokenized with its special tokens; and our text of it
    # tokenizes (special tokens parsed) to as many tokens as it evaluated.
    assert answer["prompt"] == expected_prompt
    assert answer["tokens_evaluated"] == len(tokens["tokens"])  # type: ignore[arg-type]
    assert await complete(llama_bin, model.path, expected_prompt, tmp_path) == content


@pytest.mark.parametrize("way", ["names", "keys", "legacy_keys"])
def test_read_meta_finds_the_fim_tokens_as_llama_cpp_does(
    way: Way, fim_models: dict[Way, FimModel], smollm2: Path
) -> None:
    """By key or by text, as llama.cpp: what cli mode writes and `insert` goes by."""
    model = fim_models[way]
    fim = read_meta(model.path).fim
    assert fim is not None
    assert (fim.pre, fim.suf, fim.mid, fim.rep, fim.sep) == (
        model.prefix, model.suffix, model.middle, model.repo, None
    )  # fmt: skip
    assert read_meta(smollm2).fim is None  # its <reponame> alone is not enough


async def test_infill_of_smollm2_is_not_supported(smollm2: Path, llama_bin: Path) -> None:
    async with running_llama_server(
        llama_bin, smollm2, embeddings=False, chat_template=None, params=PARAMS
    ) as server:
        async with server.http.post(server.url + "/infill", json=INFILL) as resp:
            status, body = resp.status, await resp.json()
    assert status == 501
    assert body == {
        "error": {
            "code": 501,
            "message": "Infill is not supported by this model: prefix token is missing. "
            "suffix token is missing. middle token is missing. ",
            "type": "not_supported_error",
        }
    }
