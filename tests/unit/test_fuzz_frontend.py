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

import random
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
from netc.ops import REGISTRY, verify

from .netgen import networks

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCALE = max(1, settings.default.max_examples // 25)  # `ci` registers 25 examples, `thorough` 500


def fuzz(examples: int) -> settings:
    """`examples` inputs under the `ci` profile, proportionally more under `thorough`."""
    return settings(max_examples=examples * SCALE, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

# Besides examples/*.net: a smaller ResNet-18 (fast to check) with tensor arithmetic.
SPEC_SEEDS = {
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
    # CPU time of this thread, so that other processes on a busy machine do not count.
    started = time.thread_time()
    try:
        graph = run()
    except CompileError as error:
        assert error.diagnostics, "a CompileError must hold at least one diagnostic"
        error.render()
    else:
        verify(graph)
    elapsed = time.thread_time() - started
    assert elapsed < 1.0, f"the front end took {elapsed:.2f} s of CPU time"


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

# Words for the grammar's regular-expression terminals: names the front end knows (so that
# programs reach name resolution and attribute binding) and boundary values.
WORDS: dict[str, list[str]] = {
    "NAME": [*sorted(REGISTRY), "x", "y", "z", "image", "N", "f32", "f16", "bf16", "f64", "int", "float",
             "bool", "units", "kernel", "filters", "name", "basic", "b", "_", "A1"],
    # Small sizes mostly; the limits now and then.
    "INT": ["1", "2", "3", "4", "8", "16", "1", "2", "3", "4", "8", "16", "0", "64", "10000",
            "1099511627777"],
    "FLOAT": ["0.5", "1e-5", "2.0", "0.25", "0.5", "1e-5", "0.0", "1e999"],
    "STRING": ['"same"', '"valid"', '"fc"', '"fc.1"', '""', '"resnet_blocks.net"', '"nope.net"'],
    "WS": [" ", "\n", "\t", "\r\n"],
    "COMMENT": ["# comment\n"],
}


def _terminal_words(name: str, pattern_value: str) -> list[str]:
    return WORDS.get(name, [pattern_value])


# Every token is followed by a space, so that generated tokens lex as generated (`network x`,
# not `networkx`): the programs are syntactically valid and the fuzzing reaches sema.
SPACED = {terminal.name: st.sampled_from(_terminal_words(terminal.name, terminal.pattern.value))
          .map(lambda word: word + " ") for terminal in GRAMMAR.terminals}


@fuzz(120)
@given(from_lark(GRAMMAR, start="start", explicit=SPACED))
def test_grammar_generated_programs(source: str) -> None:
    _check(lambda: load_string(source, "fuzz.net"))


@fuzz(60)
@given(from_lark(GRAMMAR, start="start"))
def test_grammar_generated_raw_programs(source: str) -> None:
    # Hypothesis's own terminal strings: any Unicode in comments and strings, tokens run together.
    _check(lambda: load_string(source, "fuzz.net"))


class GrammarWalk:
    """Random programs from the grammar's rules, thousands a second.

    `from_lark` finds and shrinks bugs but costs tens of milliseconds an example; this walk
    covers volume. Past a token budget it takes each rule's shortest expansion, so it ends.
    """

    def __init__(self, grammar: Lark):
        terminals, rules, _ = grammar.grammar.compile(["start"], ())
        self.words = {t.name: _terminal_words(t.name, t.pattern.value) for t in terminals}
        self.expansions: dict[str, list[list[tuple[str, bool]]]] = {}
        for rule in rules:
            self.expansions.setdefault(rule.origin.name, []).append(
                [(symbol.name, symbol.is_term) for symbol in rule.expansion])
        # The fewest tokens each rule can produce, by fixed-point iteration.
        self.least: dict[str, float] = dict.fromkeys(self.expansions, float("inf"))
        changed = True
        while changed:
            changed = False
            for name, options in self.expansions.items():
                best = min(sum(1 if term else self.least[sym] for sym, term in option)
                           for option in options)
                if best < self.least[name]:
                    self.least[name], changed = best, True

    def program(self, rng: random.Random, budget: int, start: str = "start") -> str:
        out: list[str] = []
        pending: list[tuple[str, bool]] = [(start, False)]
        while pending:
            symbol, is_terminal = pending.pop()
            if is_terminal:
                out.append(rng.choice(self.words[symbol]))
                continue
            options = self.expansions[symbol]
            if len(out) > budget:
                options = [min(options, key=lambda option: sum(
                    1 if term else self.least[sym] for sym, term in option))]
            pending.extend(reversed(rng.choice(options)))
        return " ".join(out)


NETWORK_PREFIX = "network n {\n    input x: f32[N, 8]\n    input image: f32[N, 3, 16, 16]\n"


@pytest.mark.parametrize("seed", range(4))
def test_grammar_walk_programs(workdir: Path, seed: int) -> None:
    walk = GrammarWalk(GRAMMAR)
    rng = random.Random(seed)
    for index in range(500 * SCALE):
        if index % 2:
            source = walk.program(rng, budget=rng.choice([20, 80, 300]))
        else:
            # Statements inside a network with inputs, so that most programs reach sema.
            statements = [walk.program(rng, budget=rng.choice([5, 20, 60]),
                                       start=rng.choice(["assign_stmt", "assign_stmt",
                                                         "_statement"]))
                          for _ in range(rng.randint(1, 6))]
            source = NETWORK_PREFIX + "\n".join(statements) + "\n    output x\n}\n"
        try:
            _check(lambda source=source: load_string(source, "walk.net", base_dir=workdir))
        except AssertionError as failure:
            raise AssertionError(f"{failure}\nprogram:\n{source}") from None


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


@fuzz(600)
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


@fuzz(800)
@given(mutated_tokens())
def test_token_mutations_of_examples(workdir: Path, source: str) -> None:
    path = workdir / "token_mutant.net"
    path.write_text(source, encoding="utf-8")
    _check(lambda: load_file(path))


# Valid programs -------------------------------------------------------------------------


@fuzz(50)
@given(networks())
def test_valid_random_networks_compile(source: str) -> None:
    started = time.perf_counter()
    verify(load_string(source, "random.net"))
    assert time.perf_counter() - started < 1.0
