from __future__ import annotations

import pytest

from backends.cli import RunTail, completion_result, exit_error, timings_of, token_counts
from backends.cli_args import completion_argv, embedding_argv, padded_ctx
from core.config import LlmParams
from supervisor.logtail import LogTail


def test_completion_argv_golden_with_the_seed_defaults() -> None:
    assert completion_argv("/b/llama-completion", "/m.gguf", "/t/p.txt", LlmParams(), 64) == [
        "/b/llama-completion",
        "--model", "/m.gguf",
        "--file", "/t/p.txt",
        "--n-predict", "64",
        "--ctx-size", "12192",
        "--batch-size", "8192",
        "--ubatch-size", "1024",
        "--temp", "0.35",
        "--top-p", "0.9",
        "--top-k", "40",
        "--presence-penalty", "0.2",
        "--mirostat", "0",
        "--no-conversation",
        "--no-display-prompt",
        "--no-escape",
    ]  # fmt: skip


def test_embedding_argv_golden_without_sampling_params() -> None:
    assert embedding_argv("/b/llama-embedding", "/m.gguf", "/t/in.txt", "<|s|>", LlmParams()) == [
        "/b/llama-embedding",
        "--model", "/m.gguf",
        "--file", "/t/in.txt",
        "--embd-separator", "<|s|>",
        "--ctx-size", "12288",
        "--batch-size", "8192",
        "--ubatch-size", "1024",
        "--pooling", "mean",
        "--embd-normalize", "2",
        "--embd-output-format", "json",
        "--no-escape",
        "--verbose-prompt",
    ]  # fmt: skip


def test_completion_argv_with_openai_fields() -> None:
    argv = completion_argv(
        "/b/llama-completion", "/m.gguf", "/t/p.txt", LlmParams(), 64,
        seed=7, frequency_penalty=0.5, schema_file="/t/schema.json",
    )  # fmt: skip
    assert argv[-6:] == [
        "--seed", "7", "--frequency-penalty", "0.5", "--json-schema-file", "/t/schema.json"
    ]  # fmt: skip


@pytest.mark.parametrize(("ctx", "padded"), [(1, 256), (256, 256), (257, 512), (12192, 12288)])
def test_padded_ctx_rounds_up_to_256(ctx: int, padded: int) -> None:
    assert padded_ctx(ctx) == padded


def test_token_counts_reads_llama_completion_perf_lines() -> None:
    log = (
        "common_perf_print:    samplers time =      12.66 ms /    23 tokens\n"
        "common_perf_print: prompt eval time =      57.23 ms /    15 tokens (  3.82 ms per token)\n"
        "common_perf_print:        eval time =     688.62 ms /     7 runs\n"
    )
    assert token_counts(log) == (15, 8)
    assert token_counts("no perf lines") == (0, 0)
    # and the durations Ollama's answers report, under llama-server's names
    assert timings_of(log) == {"prompt_ms": 57.23, "predicted_ms": 688.62}
    assert timings_of("no perf lines") is None


def test_a_failed_runs_error_never_carries_the_inputs_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """llama-embedding echoes each input, over as many lines as it has, up to its next log
    line (as the pinned llama.cpp prints them: time, level)."""
    tail = LogTail(max_lines=10)
    tail.feed(
        "0.02.861.566 I main: prompt 0: 'my secret\nsecond secret line'\n"
        "0.02.861.580 I main: prompt 1: 'third secret'\n"
        "0.02.861.590 I main: number of tokens in prompt = 4\n"
    )
    error = exit_error("llama-embedding", 1, tail)
    # Nor any line of its log: those go to the gateway's log (still without the input).
    assert error.message == "llama-embedding exited with status 1"
    assert "secret" not in caplog.text and "number of tokens" in caplog.text


def test_a_runs_lines_go_to_its_models_log_labelled_without_the_inputs_echo() -> None:
    log = LogTail(max_lines=10)
    run = RunTail(log, "llama-embedding#7: ")
    run.feed("0.02.861.566 I main: prompt 0: 'my secret\nsecond secret line'\n0.02.8")
    run.feed("61.590 I main: number of tokens in prompt = 4\n\tsampler = greedy\nhalf")
    assert log.lines() == [
        "llama-embedding#7: 0.02.861.590 I main: number of tokens in prompt = 4",
        "llama-embedding#7: \tsampler = greedy",
    ]  # and the run's own tail keeps everything, for its error and its counts
    assert run.lines()[0] == "0.02.861.566 I main: prompt 0: 'my secret" and run.count == 4


def test_a_run_that_fills_the_context_is_cut_short() -> None:
    """llama-completion stops where the context ends, below max_tokens: "length", as
    llama-server says, so a dialect reports the answer as cut (issue 27)."""
    counts = (
        "generate: n_ctx = 512, n_batch = 2048, n_predict = 512, n_keep = 0\n"
        "common_perf_print:    samplers time =      12.66 ms /   512 tokens\n"
        "common_perf_print: prompt eval time =      57.23 ms /   422 tokens\n"
    )
    assert completion_result("1, 2", counts, max_tokens=512).finish_reason == "length"
    ended = counts.replace("/   512 tokens", "/   500 tokens")
    assert completion_result("1, 2", ended, max_tokens=512).finish_reason == "stop"
