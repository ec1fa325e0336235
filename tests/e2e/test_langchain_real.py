"""LangChain (`langchain-openai`) as a second real client, unchanged, in both modes: chat
invoke, stream, stop and structured output; embeddings. Nothing here needs the internet:
`check_embedding_ctx_length=False` keeps OpenAIEmbeddings from fetching a tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel, SecretStr

from backends.catalog import GEMMA, SMOLLM2
from tests.e2e.conftest import real_settings, serving

pytestmark = pytest.mark.llama


class Person(BaseModel):
    name: str
    age: int


@pytest.mark.parametrize("backend", ["server", "cli"])
async def test_langchain_chat_and_embeddings(tmp_path: Path, backend: str) -> None:
    settings = real_settings(tmp_path, backend=backend)
    base_url = f"http://127.0.0.1:{settings.port}/v1"
    # Our own HTTP client, closed at the end: LangChain's would leave its sockets open.
    async with serving(settings), httpx.AsyncClient() as http:
        client: dict[str, Any] = {
            "base_url": base_url,
            "api_key": SecretStr("unused"),
            "max_retries": 0,
            "http_async_client": http,
        }
        chat = ChatOpenAI(model=SMOLLM2, max_completion_tokens=48, temperature=0, **client)
        answer = await chat.ainvoke("Describe the sea in three sentences.")
        assert isinstance(answer.content, str) and answer.content
        pieces = [chunk.content async for chunk in chat.astream("Say hello.")]
        assert len(pieces) > 1 and "".join(str(p) for p in pieces)
        cut = await chat.ainvoke("Describe the sea in three sentences.", stop=["e"])
        assert isinstance(cut.content, str) and "e" not in cut.content
        assert answer.content.startswith(cut.content)
        roomy = ChatOpenAI(model=SMOLLM2, max_completion_tokens=200, temperature=0, **client)
        structured = roomy.with_structured_output(Person, method="json_schema")
        person = await structured.ainvoke("Make up a person. Answer in JSON with name and age.")
        assert isinstance(person, Person) and person.name
        embeddings = OpenAIEmbeddings(model=GEMMA, check_embedding_ctx_length=False, **client)
        vectors = await embeddings.aembed_documents(["hello world", "the sea"])
        assert len(vectors) == 2 and len(vectors[0]) == 640
        assert len(await embeddings.aembed_query("hello")) == 640
