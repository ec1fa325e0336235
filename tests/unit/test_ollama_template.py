"""Ollama's `template` field rendered as Ollama's Go code renders it.

The goldens in tests/golden/ollama_templates are Go's own output (Ollama's testdata); the other
expected strings were worked out from Go's text/template rules and Ollama's template.Execute,
and checked against both running (Go 1.19, Ollama's Execute copied into a harness).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import BadRequest
from gateway.dialects.ollama_template import TemplateValues, render

GOLDEN = Path(__file__).parent.parent / "golden" / "ollama_templates"
NAMES = sorted(path.stem for path in GOLDEN.glob("*.gotmpl"))
HELLO = ("user", "Hello, how are you?")
GREAT = ("assistant", "I'm doing great. How can I help you today?")
SHOW = ("user", "I'd like to show off how chat templating works!")
CASES = {  # as Ollama's template_test.go names them
    "user": (HELLO,),
    "user-assistant-user": (HELLO, GREAT, SHOW),
    "system-user-assistant-user": (("system", "You are a helpful assistant."), HELLO, GREAT, SHOW),
}
# Ollama's test strips one trailing space from these before it compares
TRAILING_SPACE = {"chatqa", "llama2-chat", "mistral-instruct", "openchat", "vicuna"}
GENERATE = TemplateValues(system="You are terse.", prompt="Why is the sky blue?")


def template(name: str) -> str:
    return (GOLDEN / f"{name}.gotmpl").read_text()


def test_every_builtin_template_of_ollama_is_here() -> None:
    assert len(NAMES) == 20
    assert {"chatml", "llama3-instruct", "gemma-instruct", "alpaca"} <= set(NAMES)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", NAMES)
def test_ollamas_templates_render_as_its_goldens(name: str, case: str) -> None:
    got = render(template(name), TemplateValues(messages=CASES[case]))
    if name in TRAILING_SPACE and got.endswith(" "):
        got = got[:-1]
    assert got == (GOLDEN / name / case).read_text()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "chatml",
            "<|im_start|>system\nYou are terse.<|im_end|>\n"
            "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            "llama3-instruct",
            "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhy is the sky blue?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        (
            "gemma-instruct",
            "<start_of_turn>user\nYou are terse.\nWhy is the sky blue?<end_of_turn>\n"
            "<start_of_turn>model\n",
        ),
        ("alpaca", "You are terse.\n\n### Instruction:\nWhy is the sky blue?\n\n### Response:\n"),
        (
            "phi-3",
            "<|system|>\nYou are terse.<|end|>\n"
            "<|user|>\nWhy is the sky blue?<|end|>\n<|assistant|>\n",
        ),
    ],
)
def test_generate_renders_system_and_prompt(name: str, expected: str) -> None:
    assert render(template(name), GENERATE) == expected


def test_generate_without_system_has_no_system_turn() -> None:
    values = TemplateValues(prompt="Why is the sky blue?")
    expected = "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n"
    assert render(template("chatml"), values) == expected


QWEN3 = (GOLDEN / "more" / "qwen3.gotmpl").read_text()  # Ollama's thinking/template_test.go


def test_qwen3_with_its_tool_branches_and_a_field_ollama_never_sets() -> None:
    expected = (
        "<|im_start|>system\nYou are terse.\n/no_think<|im_end|>\n"
        "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n\n\t\t\t"
    )
    assert render(QWEN3, GENERATE) == expected
    messages = (("system", "S"), ("user", "u1"), ("assistant", "a1"), ("user", "u2"))
    expected = (
        "<|im_start|>system\nS\n/no_think<|im_end|>\n<|im_start|>user\nu1<|im_end|>\n"
        "<|im_start|>assistant\n\na1<|im_end|>\n<|im_start|>user\nu2<|im_end|>\n"
        "<|im_start|>assistant\n\n\t\t\t"
    )
    assert render(QWEN3, TemplateValues(messages=messages)) == expected


def test_ollamas_generate_handler_cases() -> None:
    """server/routes_generate_test.go: "prompt with template" and "prompt with suffix"."""
    source = (
        "{{- if .System }}{{ .System }} {{ end }}\n"
        "{{- if .Prompt }}### USER {{ .Prompt }} {{ end }}\n"
        "{{- if .Response }}### ASSISTANT {{ .Response }} {{ end }}"
    )
    values = TemplateValues(system="You can perform magic tricks.", prompt="Help me write tests.")
    assert render(source, values) == "You can perform magic tricks. ### USER Help me write tests. "
    values = TemplateValues(prompt="def add(", suffix="    return c")
    assert render(FIM, values) == "<PRE> def add( <SUF>    return c <MID>"


def test_a_field_ollama_does_not_have_is_nothing_as_in_go() -> None:
    source = "{{ .Foo }}|{{ if .Thinking }}t{{ else }}f{{ end }}|{{ .Prompt }}"
    assert render(source, TemplateValues(prompt="p")) == "<no value>|f|p"


def test_output_is_not_html_escaped() -> None:
    values = TemplateValues(prompt="<b>'a' & \"b\"</b>")
    assert render("{{ .Prompt }}", values) == "<b>'a' & \"b\"</b>"


# Templates without .Messages: Ollama's own cases (template_test.go, TestExecuteWithMessages)
MISTRAL = "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] "
CHATML = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)
FRIEND = (("user", "Hello friend!"), ("assistant", "Hello human!"), ("user", "What is your name?"))
HELPFUL = ("system", "You are a helpful assistant!")


@pytest.mark.parametrize(
    ("source", "messages", "expected"),
    [
        (
            MISTRAL,
            FRIEND,
            "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] ",
        ),
        (
            MISTRAL + "{{ .Response }}",
            FRIEND,
            "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] ",
        ),
        (
            MISTRAL,
            (HELPFUL, *FRIEND),
            "[INST] You are a helpful assistant!\n\nHello friend![/INST] Hello human!"
            "[INST] What is your name?[/INST] ",
        ),
        (
            CHATML,
            (HELPFUL, *FRIEND),
            "<|im_start|>system\nYou are a helpful assistant!<|im_end|>\n"
            "<|im_start|>user\nHello friend!<|im_end|>\n"
            "<|im_start|>assistant\nHello human!<|im_end|>\n"
            "<|im_start|>user\nWhat is your name?<|im_end|>\n<|im_start|>assistant\n",
        ),
    ],
)
def test_a_template_without_messages_runs_once_per_turn(
    source: str, messages: tuple[tuple[str, str], ...], expected: str
) -> None:
    assert render(source, TemplateValues(messages=messages)) == expected


def test_the_last_turn_is_cut_after_its_response() -> None:
    source = "{{ .System }}|{{ .Prompt }}|{{ .Response }}|tail"
    assert render(source, GENERATE) == "You are terse.|Why is the sky blue?|"
    turns = (("user", "u1"), ("assistant", "a1"), ("user", "u2"))
    assert render(source, TemplateValues(messages=turns)) == "|u1|a1|tail|u2|"


def test_the_cut_drops_the_rest_of_the_action_as_ollamas_deletenode() -> None:
    source = '{{ .Prompt }}:{{ .Response | printf "<%s>" }}:tail'
    assert render(source, TemplateValues(prompt="P")) == "P:"
    turns = (("user", "u1"), ("assistant", "a1"), ("user", "u2"))
    assert render(source, TemplateValues(messages=turns)) == "u1:<a1>:tailu2:"
    source = '{{ .Prompt }}:{{ printf "%s|%s" .Response .Prompt }}:tail'
    assert render(source, GENERATE) == "Why is the sky blue?:|%!s(MISSING)"


def test_a_template_without_response_gets_one_appended() -> None:
    source = "{{ if .System }}<<SYS>>{{ .System }}<</SYS>>\n{{ end }}[INST] {{ .Prompt }} [/INST]"
    expected = "<<SYS>>You are terse.<</SYS>>\n[INST] Why is the sky blue? [/INST]"
    assert render(source, GENERATE) == expected
    with_answer = TemplateValues(prompt="Hi", response="Hello")
    assert render("Q: {{ .Prompt }} A: ", with_answer) == "Q: Hi A: Hello"


# Fill in the middle: Ollama's TestExecuteWithSuffix template
FIM = (
    "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>\n"
    "{{- else }}{{ .Prompt }}\n{{- end }}"
)


def test_a_suffix_fills_in_the_middle() -> None:
    values = TemplateValues(system="ignored", prompt="def add(", suffix="return x")
    assert render(FIM, values) == "<PRE> def add( <SUF>return x <MID>"
    assert render(FIM, TemplateValues(prompt="hello")) == "hello"


def test_fill_in_the_middle_has_no_system_as_in_ollama() -> None:
    source = "{{ .System }}|{{ .Prompt }}|{{ .Suffix }}|{{ .Tools }}|{{ if .System }}s{{ end }}"
    values = TemplateValues(system="S", prompt="p", suffix="s")
    assert render(source, values) == "<no value>|p|s|<no value>|"


def test_values_ollama_has_but_we_never_fill() -> None:
    source = (
        "{{ range .Messages }}[{{ .Thinking }}|{{ .ToolName }}|{{ .ToolCalls }}|{{ .Images }}|"
        "{{ len .ToolCalls }}{{ if .ToolCalls }}calls{{ end }}]{{ end }}"
        "{{ .Prompt }}|{{ .Tools }}|{{ json .Tools }}|"
        "{{ .Think }}|{{ .ThinkLevel }}|{{ .IsThinkSet }}"
        "{{ if .Tools }}tools{{ end }}{{ range .Tools }}tool{{ else }}|none{{ end }}"
    )
    expected = "[||[]|[]|0]<no value>|null|null|false||false|none"
    assert render(source, TemplateValues(prompt="p")) == expected


def test_messages_of_one_role_are_merged_and_systems_joined() -> None:
    source = "{{ .System }}|{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}"
    messages = (("system", "A"), ("system", "B"), ("user", "u1"), ("user", "u2"))
    assert (
        render(source, TemplateValues(messages=messages)) == "A\n\nB|system=A\n\nB;user=u1\n\nu2;"
    )


def test_trim_markers_and_comments() -> None:
    source = "a  \n {{- .Prompt -}} \n\t b {{- /* c */ -}}   c {{/* d */}} d{{-3}}{{ -3 }}"
    assert render(source, TemplateValues(prompt="P")) == "aPbc  d-3-3"
    assert render("x {{- /* multi\nline */}} y", TemplateValues()) == "x y"
    assert render("{{- .Prompt}}x {{-\n.Prompt\n-}}\ny", TemplateValues(prompt="P")) == "PxPy"


def test_nested_if_and_range_with_variables() -> None:
    source = (
        "{{- range $i, $m := .Messages }}\n"
        "{{- if and (eq $i 0) $.System }}[{{ $.System }}]{{ end }}\n"
        '{{- if eq $m.Role "user" }}U:{{ .Content }}\n'
        '{{- else if eq .Role "assistant" }}A:{{ .Content }}\n'
        "{{- else }}{{ continue }}\n"
        "{{- end }};\n"
        "{{- end }}"
    )
    messages = (("system", "s"), ("user", "u1"), ("assistant", "a1"), ("user", "u2"))
    assert render(source, TemplateValues(messages=messages)) == "[s]U:u1;A:a1;U:u2;"


def test_break_with_and_range_else() -> None:
    source = (
        "{{ range .Tools }}tool{{ else }}no tools{{ end }}|"
        "{{ with .System }}<{{ . }}>{{ else }}none{{ end }}|"
        "{{ range $i, $_ := .Messages }}{{ if ge $i 2 }}{{ break }}{{ end }}{{ $i }}{{ end }}"
    )
    messages = (("system", "S"), ("user", "a"), ("assistant", "b"), ("user", "c"))
    assert render(source, TemplateValues(messages=messages)) == "no tools|<S>|01"


def test_variables_are_assigned_across_iterations_and_scoped_to_their_block() -> None:
    source = (
        '{{ $x := "a" }}{{ range .Messages }}{{ $x = printf "%s+%s" $x .Role }}{{ $y := 1 }}'
        "{{ end }}{{ $x }}{{ if true }}{{ $x := 2 }}{{ $x }}{{ end }}{{ $x }}"
    )
    assert render(source, GENERATE) == "a+system+user2a+system+user"


def test_functions() -> None:
    source = (
        '{{ or .System "default" }}|{{ and 1 0 }}|{{ not "" }}|{{ ne "a" "b" }}|{{ lt 1 2 }}'
        '{{ gt "b" "a" }}|{{ eq .Prompt "x" "p" }}|{{ len "héllo" }}|{{ slice "hello" 1 3 }}|'
        '{{ .Prompt | printf "<%s>" }}'
    )
    assert (
        render(source, TemplateValues(prompt="p")) == "default|0|true|true|truetrue|true|6|el|<p>"
    )
    source = (
        "{{ len (slice .Messages 1) }}|{{ eq (index .Messages 0) (index .Messages 0) }}|"
        '{{ range .Messages }}{{ .Content | printf "<%s>" }}{{ end }}|{{ printf "%s" .Prompt }}'
    )
    expected = "1|true|<You are terse.><Why is the sky blue?>|%!s(<nil>)"
    assert render(source, GENERATE) == expected


def test_eq_of_nothing_and_of_nil_lists_as_go() -> None:
    fim = TemplateValues(prompt="p", suffix="s")
    source = '{{ eq .System .Tools }}|{{ eq .System "" }}|{{ ne .Messages .Tools }}'
    assert render(source, fim) == "true|false|false"
    source = "{{ range .Messages }}{{ end }}{{ eq .Tools .Prompt }}|{{ eq .Messages .Tools }}"
    assert render(source, TemplateValues(prompt="p")) == "true|false"


def test_range_variables_hold_the_ranged_value_in_else() -> None:
    source = (
        '{{ range .Messages }}{{ end }}{{ $i := "outer" }}'
        "{{ range $i, $m := .Tools }}{{ else }}{{ $i }}{{ end }}{{ $i }}"
    )
    assert render(source, TemplateValues(prompt="p")) == "nullouter"


def test_index_and_slice_of_strings_and_nil_lists() -> None:
    source = "{{ range .Messages }}{{ end }}"
    source += '{{ len (slice .Tools) }}|{{ index "abc" 1 }}|{{ slice "abc" 1 }}'
    assert render(source, TemplateValues(prompt="p")) == "0|98|bc"


def test_printf_marks_wrong_missing_and_extra_arguments_as_go_does() -> None:
    source = '{{ printf "%d|%s|%v|%%" "a" 1 true }}{{ printf "%s" }}{{ printf "%s" "x" "y" 2 }}'
    expected = "%!d(string=a)|%!s(int=1)|true|%%!s(MISSING)x%!(EXTRA string=y, int=2)"
    assert render(source, TemplateValues()) == expected


def test_json_escapes_as_go_does() -> None:
    source = "{{ range .Messages }}{{ json .Content }}{{ end }}"
    values = TemplateValues(prompt='say "<hi>" & bye\n')
    assert render(source, values) == '"say \\"\\u003chi\\u003e\\" \\u0026 bye\\n"'


def test_string_literals() -> None:
    source = '{{ "tab\\there \\"q\\" \\u00e9 \\x41 \\101" }}|{{ `raw\\n` }}|{{ true }}|{{ 42 }}'
    assert render(source, TemplateValues()) == 'tab\there "q" é A A|raw\\n|true|42'


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ .Prompt ", "unclosed action"),
        ("{{ if .Prompt }}x", "unclosed {{if}}"),
        ("{{ range .Messages }}x{{ else }}", "unclosed {{range}}"),
        ("{{ with .System }}", "unclosed {{with}}"),
        ("{{ foo .Prompt }}", "function 'foo' not defined"),
        ('{{ template "x" }}', "{{template}} is not supported"),
        ('{{ define "x" }}y{{ end }}', "{{define}} is not supported"),
        ('{{ block "x" . }}y{{ end }}', "{{block}} is not supported"),
        ("{{ range .Messages }}{{ .Foo }}{{ end }}", "can't evaluate field Foo in a message"),
        ("{{ .Prompt.Length }}", "can't evaluate field Length in a string"),
        ("{{ end }}", "unexpected {{end}}"),
        ("x\n{{ else }}", "line 2: unexpected {{else}}"),
        ("{{ if\n.Prompt }}\n{{ end }}{{ end }}", "line 3: unexpected {{end}}"),
        ("{{ if 1 }}" * 65 + "{{ end }}" * 65, "nested deeper than 64"),
        ("{{ " + "(" * 65 + "1" + ")" * 65 + " }}", "nested deeper than 64"),
        ("{{ $x }}", "undefined variable $x"),
        ("{{ $x = 1 }}", "undefined variable $x"),
        ("{{ if .System }}{{ $y := 1 }}{{ end }}{{ $y }}", "undefined variable $y"),
        ("{{ break }}", "{{break}} outside {{range}}"),
        ("{{ range .Messages }}{{ else }}{{ continue }}{{ end }}", "{{continue}} outside"),
        ("{{ }}", "missing value for command"),
        ("{{ if }}{{ end }}", "missing value for if"),
        ("{{/* x }}", "unclosed comment"),
        ("{{/* x */ }}", "comment ends before closing delimiter"),
        ("{{ (.Prompt }}", "unclosed left paren"),
        ("{{ .Prompt) }}", "unexpected ')'"),
        ("{{ nil }}", "'nil' is not supported"),
        ("{{ 1.5 }}", "'1.5' is not supported"),
        ("{{ .Prompt ! }}", "'!' in action"),
        ('{{ "\\q" }}', "invalid or unsupported escape \\q"),
        ('{{ "\\ud800" }}', "invalid or unsupported escape \\ud800"),
        ('{{ "\\U00110000" }}', "invalid or unsupported escape \\U00110000"),
        ('{{ "\\xff" }}', "invalid or unsupported escape \\xff"),
        ("{{ eq .Prompt 1 }}", "incompatible types for comparison: a string and a int"),
        ("{{ lt true false }}", "can't compare a bool"),
        ("{{ not 1 2 }}", "wrong number of args for not: want 1 got 2"),
        ("{{ and }}", "wrong number of args for and"),
        ("{{ .Prompt 1 }}", "can't give an argument to a non-function"),
        ("{{ range .Prompt }}{{ end }}", "range can't iterate over a string"),
        ("{{ len .Suffix }}", "len of a <no value>"),
        ("{{ slice .Prompt 1 100 }}", "slice index out of range"),
        ("{{ index .Messages 5 }}", "index out of range: 5"),
        ("{{ index .Messages 0 | len }}", "len of a message"),
        ("{{ index .Suffix }}", "index of untyped nil"),
        ("{{ slice .Prompt true }}", "cannot index with a bool"),
        ("{{ currentDate }}", "function 'currentDate' is not supported"),
        ("{{ print .Prompt }}", "function 'print' is not supported"),
        ('{{ printf "%q" .Prompt }}', "printf verb '%q' is not supported"),
        ("{{ json .Messages }}", "json of a list is not supported"),
        ("{{ range .Messages }}{{ . }}{{ end }}", "printing a message is not supported"),
        ("{{ .Messages }}", "printing a list is not supported"),
        ("{{ (index .Messages 0).Role }}", "a field of a (pipeline) is not supported"),
        ("{{ if .System }}{{ else with .Prompt }}{{ end }}", "{{else with}} in {{if}}"),
        ("{{ range $i, $m := .Messages }}{{ end }}{{ if $a, $b := 1 }}{{ end }}", "too many"),
    ],
)
def test_what_is_not_in_the_subset_is_a_bad_request_naming_it(source: str, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        render(source, TemplateValues(system="s", prompt="p"))
    assert caught.value.param == "template"
    assert caught.value.message.startswith("template: ")
    assert message in caught.value.message


def test_a_template_that_runs_away_is_stopped() -> None:
    ten = TemplateValues(messages=(("user", "u"), ("assistant", "a")) * 5)
    nested = "{{ range $.Messages }}" * 7 + "x" + "{{ end }}" * 7  # 10**7 iterations
    with pytest.raises(BadRequest, match="runs past 1000000 steps"):
        render(nested, ten)
    wide = "{{ range .Messages }}" + "x" * 2**21 + "{{ end }}"  # 20 MiB of output
    with pytest.raises(BadRequest, match="runs past 16777216 characters"):
        render(wide, ten)


TEMPLATE_BITS = st.sampled_from(
    [
        "{{",
        "}}",
        "{{- ",
        " -}}",
        "/*",
        "*/",
        " ",
        "\n",
        "x",
        ".Prompt",
        ".Messages",
        ".Role",
        "$",
        "$x",
        ":=",
        "=",
        "if",
        "else",
        "end",
        "range",
        "with",
        "break",
        "(",
        ")",
        "|",
        '"s"',
        "1",
        "eq",
        "len",
        "slice",
        "printf",
        "and",
        ",",
        ".",
        "`r`",
        "-",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(TEMPLATE_BITS, max_size=30).map("".join))
def test_any_template_renders_or_is_a_bad_request(source: str) -> None:
    try:
        assert isinstance(render(source, GENERATE), str)
    except BadRequest as refused:
        assert refused.param == "template"
