"""Fuzzing the front end: whatever the input, a verified graph or a `CompileError`.

Four sources of input, from syntax-shaped to semantics-shaped:

* programs drawn from the grammar itself (`hypothesis.extra.lark.from_lark`);
* byte-level mutations of the example files (deleted, inserted, repeated and flipped bytes),
  loaded from disk so that broken UTF-8 and imports take the real path;
* token-level mutations of the same files (a token dropped, repeated or swapped for another
  op name, keyword, number or punctuation mark), which keep most of the program parseable and
  so reach name resolution, attribute binding and shape inference;
* valid random networks (`netgen.networks`), which must compile.

For every input: no exception but `CompileError`, a graph that passes `ir.verify`, a rendering
of the diagnostics that does not fail, and under a second of front-end time. The Hypothesis
profile scales the example counts: `ci` (the default) runs a few thousand inputs in well under a
minute, `HYPOTHESIS_PROFILE=thorough` twenty times as many.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from lark import Lark

from netc.diagnostics import CompileError
from netc.frontend import load_file, load_string
from netc.frontend.parser import _LARK_OPTIONS, _grammar_text
from netc.ir import verify
from netc.ops import REGISTRY

from .netgen import networks

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCALE = max(1, settings.default.max_examples // 25)  # `ci` registers 25 examples, `thorough` 500


def fuzz(examples: int) -> settings:
    """`examples` inputs under the `ci` profile, proportionally more under `thorough`."""
    return settings(max_examples=examples * SCALE, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

# The spec's examples, so the fuzzer has seeds even where examples/ is missing.
SPEC_SEEDS = {
    "lenet.net": """\
network lenet5 {
    input image: f32[N, 1, 28, 28]
    x = conv2d(image, filters=6, kernel=5, padding=2) |> relu |> maxpool2d(2)
    x = conv2d(x, filters=16, kernel=5) |> relu |> maxpool2d(2)
    x = flatten(x)
    x = dense(x, 120) |> relu
    x = dense(x, 84) |> relu
    output logits = dense(x, 10)
}
""",
    "resnet_blocks.net": """\
block basic(x, filters: int) {
    y = conv2d(x, filters, kernel=3, padding=1, bias=false) |> batchnorm |> relu
    y = conv2d(y, filters, kernel=3, padding=1, bias=false) |> batchnorm
    return relu(y + x)
}

block down(x, filters: int) {
    y = conv2d(x, filters, kernel=3, stride=2, padding=1, bias=false) |> batchnorm |> relu
    y = conv2d(y, filters, kernel=3, padding=1, bias=false) |> batchnorm
    s = conv2d(x, filters, kernel=1, stride=2, bias=false) |> batchnorm
    return relu(y + s)
}
""",
    "resnet18.net": """\
import "resnet_blocks.net"

network resnet18 {
    input image: f32[N, 3, 64, 64]
    x = conv2d(image, 64, kernel=7, stride=2, padding=3, bias=false) |> batchnorm |> relu
    x = maxpool2d(x, 3, stride=2, padding=1)
    repeat 2 { x = basic(x, 64) }
    x = down(x, 128)
    x = basic(x, 128)
    x = global_avgpool(x) |> flatten
    output logits = dense(x, 1000) * 0.5 - 1
}
""",
}


def _seeds() -> dict[str, bytes]:
    seeds = {name: text.encode() for name, text in SPEC_SEEDS.items()}
    for path in sorted((ROOT / "examples").glob("*.net")):
        seeds[f"example_{path.name}"] = path.read_bytes()
    return seeds


SEEDS = _seeds()


def _check(run: object) -> None:
    """Run a front-end call; only a graph that verifies or a CompileError may come out."""
    assert callable(run)
    started = time.perf_counter()
    try:
        graph = run()
    except CompileError as error:
        assert error.diagnostics, "a CompileError must hold at least one diagnostic"
        error.render()
    else:
        verify(graph)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"the front end took {elapsed:.2f} s"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the seeds, so mutated files can import the real block files."""
    folder = tmp_path_factory.mktemp("fuzz")
    for name, data in SEEDS.items():
        (folder / name).write_bytes(data)
    if (ROOT / "examples").is_dir():
        for path in (ROOT / "examples").glob("*.net"):
            shutil.copy(path, folder / path.name)
    return folder


# Programs from the grammar --------------------------------------------------------------

# A grammar object built from the text (the cached parser has no grammar left to generate from).
GRAMMAR = Lark(_grammar_text(), **_LARK_OPTIONS)


@fuzz(1500)
@given(from_lark(GRAMMAR, start="start"))
def test_grammar_generated_programs(source: str) -> None:
    _check(lambda: load_string(source, "fuzz.net"))


@fuzz(1000)
@given(from_lark(GRAMMAR, start="start", alphabet=st.characters(codec="ascii")))
def test_grammar_generated_ascii_programs(source: str) -> None:
    _check(lambda: load_string(source, "fuzz.net"))


# Byte-level mutations -------------------------------------------------------------------


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(sorted(SEEDS.values()))))
    for _ in range(draw(st.integers(1, 8))):
        where = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["delete", "insert", "repeat", "flip", "truncate"]))
        if kind == "delete":
            del data[where:where + draw(st.integers(1, 40))]
        elif kind == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "repeat":
            data[where:where] = data[where:where + draw(st.integers(1, 80))]
        elif kind == "flip" and where < len(data):
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[where:]
    return bytes(data)


@fuzz(1000)
@given(mutated_bytes())
def test_byte_mutations_of_examples(workdir: Path, data: bytes) -> None:
    path = workdir / "mutant.net"
    path.write_bytes(data)
    _check(lambda: load_file(path))


# Token-level mutations ------------------------------------------------------------------

TOKEN = re.compile(r'#[^\n]*|"[^"\n]*"|[A-Za-z_][A-Za-z0-9_]*|[0-9]+(?:\.[0-9]+)?|\|>|//|\S|\s+')
VOCABULARY = sorted({
    *REGISTRY, "network", "block", "input", "output", "return", "repeat", "import", "true",
    "false", "x", "y", "image", "filters", "name", "basic", "down", "f32", "f16", "bf16", "N",
    "0", "1", "-1", "2", "3", "0.5", "1e-5", "1099511627777", "10000", '"same"', '"fc"',
    '"resnet_blocks.net"', "(", ")", "[", "]", "{", "}", ",", "=", ":", "+", "-", "*", "/",
    "//", "|>", "\n", " ",
})


@st.composite
def mutated_tokens(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(sorted(SEEDS.values()))).decode("utf-8", "replace")
    tokens = TOKEN.findall(text)
    for _ in range(draw(st.integers(1, 4))):
        if not tokens:
            break
        where = draw(st.integers(0, len(tokens) - 1))
        kind = draw(st.sampled_from(["delete", "repeat", "replace", "insert"]))
        if kind == "delete":
            del tokens[where]
        elif kind == "repeat":
            tokens[where:where] = tokens[where:where + draw(st.integers(1, 6))]
        elif kind == "replace":
            tokens[where] = draw(st.sampled_from(VOCABULARY))
        else:
            tokens.insert(where, draw(st.sampled_from(VOCABULARY)))
    return "".join(tokens)


@fuzz(1500)
@given(mutated_tokens())
def test_token_mutations_of_examples(workdir: Path, source: str) -> None:
    path = workdir / "token_mutant.net"
    path.write_text(source, encoding="utf-8")
    _check(lambda: load_file(path))


# Valid programs -------------------------------------------------------------------------


@fuzz(100)
@given(networks())
def test_valid_random_networks_compile(source: str) -> None:
    started = time.perf_counter()
    verify(load_string(source, "random.net"))
    assert time.perf_counter() - started < 1.0
