"""Patterns: the decomposed forms in which exporters write ops that `.net` has whole.

PyTorch's exporters (`torch.onnx.export` with `dynamo=False` and `dynamo=True`) spell some
modules out in primitive ONNX ops, depending on the opset:

* layer norm (legacy exporter before opset 17, or written by hand): `ReduceMean`, `Sub`,
  `Pow 2`, `ReduceMean`, `Add eps`, `Sqrt`, `Div`, then `Mul weight` and `Add bias` ->
  `layernorm` with those parameters (ones and zeros without them);
* GELU, exact (both exporters before opset 20): `Div sqrt 2` (or `Mul sqrt 0.5`), `Erf`,
  `Add 1`, `Mul x`, `Mul 0.5`, the last two in either order -> `gelu`;
* GELU, tanh form: `x + 0.044715 * x**3` (`Pow 3` or two `Mul`s), `Mul sqrt(2/pi)`, `Tanh`,
  `Add 1`, `Mul x`, `Mul 0.5` -> `gelu(approximate="tanh")`;
* SiLU: `Mul(x, Sigmoid(x))` -> `silu`;
* hardswish (legacy exporter before opset 14): `Mul(x, HardSigmoid(x, alpha=1/6))` ->
  `hardswish`;
* RMS norm (dynamo exporter): `Pow 2`, `ReduceMean`, `Add eps`, `Sqrt`, `Reciprocal`,
  `Mul x`, then `Mul weight` -> `rmsnorm`;
* scaled dot-product attention (both exporters): `MatMul(q * a, k^T * b)` (or the product
  scaled after), `Add` of a causal mask, `Softmax`, `MatMul v` -> `attention(q, k, v,
  scale=, causal=)`, the key transposed back where the exporter gives `k^T`.

`find_patterns` runs over the ONNX graph after constant folding and before translation. A
match is a set of nodes whose intermediate values nothing outside it reads; it is translated as
one op at its last node (everything it reads from outside is known by then, also constants
that shape arithmetic computes during translation), and its other nodes are skipped. A
pattern whose `.net` op is not registered is not looked for. What depends on types (the
normalised axis is the last one) or on values computed during translation (attention's scale
and mask) is checked when the match is translated; a match that fails the check is
translated node by node. Handlers register patterns of their own with `_pattern` too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np
import onnx

from netc.ops import REGISTRY

if TYPE_CHECKING:
    from netc.onnx.importer.translate import _Importer


@dataclass(frozen=True)
class Match:
    """Nodes of the ONNX graph that compute one `.net` op."""

    op: str
    x: str
    """The ONNX value the op is applied to."""
    output: str
    """The ONNX value the nodes compute."""
    nodes: frozenset[int]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, np.ndarray] | None = None
    """A layer's parameters by `.net` name (vectors over the last dimension), or None."""
    sources: Mapping[str, str] = field(default_factory=dict)
    """The initializer each parameter comes from, for the layer's name."""
    axis: int | None = None
    """The axis the nodes reduce over, as written; translated only when it is x's last."""
    operands: tuple[str, ...] = ()
    """More tensor operands after x (ONNX values), in the op's order."""
    swapped: frozenset[int] = frozenset()
    """Positions among (x, *operands) given with their last two axes swapped (a key as
    `k^T`): swapped back by a `transpose` before the op."""
    resolve: Callable[[Mapping[str, Any]], Mapping[str, Any] | None] | None = None
    """Attributes that depend on values known only during translation (constants computed
    from shapes), from the importer's values; None: the nodes are translated one by one."""

    @property
    def first(self) -> int:
        return min(self.nodes)

    @property
    def last(self) -> int:
        return max(self.nodes)


class _View:
    """The ONNX graph as the patterns read it: nodes, their users, and the constants."""

    def __init__(self, importer: _Importer) -> None:
        self.importer = importer
        self.nodes = importer.nodes

    def node(self, index: int | None, *op_types: str) -> onnx.NodeProto | None:
        """Node `index` if it is of one of `op_types` in the default domain."""
        if index is None:
            return None
        node = self.nodes[index]
        if node.op_type not in op_types or node.domain not in ("", "ai.onnx"):
            return None
        return node

    def is_op(self, index: int | None, *op_types: str) -> TypeGuard[int]:
        """Whether `index` is a node of one of `op_types` in the default domain."""
        return self.node(index, *op_types) is not None

    def producer(self, name: str) -> int | None:
        return self.importer.producer(name)

    def only_user(self, name: str) -> int | None:
        return self.importer.only_user(name)

    def other(self, index: int, name: str) -> str | None:
        return self.importer.other_operand(index, name)

    def is_tensor(self, name: str) -> bool:
        """Computed at run time (not a constant known now)."""
        return bool(name) and not isinstance(self.importer.values.get(name), np.ndarray)

    def near(self, name: str | None, target: float, tolerance: float = 1e-6) -> bool:
        return name is not None and self.importer.constant_near(name, target, tolerance)

    def vector(self, name: str | None) -> np.ndarray | None:
        """A float constant that is one vector over the last dimension (leading sizes 1)."""
        value = self.importer.values.get(name) if name else None
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.size == 0 or \
                value.size != (value.shape[-1] if value.ndim else 1):
            return None
        return value.reshape(-1)

    def reduced_axis(self, index: int) -> int | None:
        """The one axis a ReduceMean with keepdims reduces over (attribute before opset 18,
        operand from 18), or None."""
        node = self.nodes[index]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if not attrs.get("keepdims", 1):
            return None
        axes: Any = attrs.get("axes")
        if len(node.input) > 1 and node.input[1]:
            axes = self.importer.values.get(node.input[1])
            axes = axes.reshape(-1).tolist() if isinstance(axes, np.ndarray) else None
        return int(axes[0]) if axes is not None and len(axes) == 1 else None

    def internal(self, nodes: frozenset[int], output: str) -> bool:
        """Whether nothing outside `nodes` reads what they compute, except `output`."""
        outputs = self.importer.graph_outputs
        for index in nodes:
            for name in self.nodes[index].output:
                if name and name != output and (name in outputs or not set(
                        self.importer.users.get(name, [])) <= nodes):
                    return False
        return True


Finder = Callable[[_View, int], Match | None]
_FINDERS: dict[str, list[tuple[str, Finder]]] = {}
"""Anchor op type -> (the `.net` op, the finder) of each pattern found from a node of it."""


def _pattern(anchor: str, op: str) -> Callable[[Finder], Finder]:
    def register(finder: Finder) -> Finder:
        _FINDERS.setdefault(anchor, []).append((op, finder))
        return finder
    return register


def find_patterns(importer: _Importer) -> dict[int, Match]:
    """Every pattern in the graph, by its last node; the nodes of one match no other."""
    view = _View(importer)
    taken: set[int] = set(importer.consumed)
    found: dict[int, Match] = {}
    for index, node in enumerate(importer.nodes):
        if index in taken or node.domain not in ("", "ai.onnx"):
            continue
        for op, finder in _FINDERS.get(node.op_type, ()):
            if op not in REGISTRY:
                continue
            match = finder(view, index)
            if match is None or match.nodes & taken or \
                    not view.internal(match.nodes, match.output):
                continue
            found[match.last] = match
            taken.update(match.nodes)
            break
    return found


# GELU ---------------------------------------------------------------------------------------


def _gelu_tail(view: _View, inner: int, x: str) -> tuple[set[int], str] | None:
    """`0.5 * x * (1 + t)` after the Erf or Tanh node `inner` computing t, in the orders
    exporters write it: the nodes and the result."""
    t = view.nodes[inner].output[0]
    add = view.only_user(t)
    if not view.is_op(add, "Add", "Sum") or not view.near(view.other(add, t), 1.0):
        return None
    one_plus = view.nodes[add].output[0]
    first = view.only_user(one_plus)
    partner = view.other(first, one_plus) if view.is_op(first, "Mul") else None
    if first is None or partner is None:
        return None
    product = view.nodes[first].output[0]
    if partner == x or view.near(partner, 0.5):  # (x * (1 + t)) * 0.5, (0.5 * (1 + t)) * x
        last = view.only_user(product)
        other = view.other(last, product) if view.is_op(last, "Mul") else None
        if last is None or other is None or \
                not (view.near(other, 0.5) if partner == x else other == x):
            return None
        return {add, first, last}, view.nodes[last].output[0]
    half = view.producer(partner)  # (x * 0.5) * (1 + t)
    if not view.is_op(half, "Mul") or x not in view.nodes[half].input or \
            not view.near(view.other(half, x), 0.5):
        return None
    return {add, first, half}, product


def _gelu(view: _View, head: set[int], inner: int, x: str | None,
          attrs: Mapping[str, Any]) -> Match | None:
    tail = _gelu_tail(view, inner, x) if x is not None and view.is_tensor(x) else None
    if x is None or tail is None:
        return None
    nodes, output = tail
    return Match("gelu", x, output, frozenset(head | {inner} | nodes), attrs)


def _scalar_factor(view: _View, index: int, value: float) -> str | None:
    """For the Mul node `index` of a tensor and the constant `value`: the tensor."""
    constant = next((n for n in view.nodes[index].input if view.near(n, value)), None)
    return view.other(index, constant) if constant is not None else None


@_pattern("Erf", "gelu")
def _gelu_erf(view: _View, index: int) -> Match | None:
    """`Erf` of `x / sqrt 2` (or `x * sqrt 0.5`), then the GELU tail."""
    scaled = view.producer(view.nodes[index].input[0])
    if view.is_op(scaled, "Div"):
        divided = view.nodes[scaled].input
        x = divided[0] if view.near(divided[1], math.sqrt(2.0)) else None
    elif view.is_op(scaled, "Mul"):
        x = _scalar_factor(view, scaled, math.sqrt(0.5))
    else:
        return None
    return _gelu(view, {scaled}, index, x, {})


def _cube(view: _View, name: str) -> tuple[str, set[int]] | None:
    """(x, nodes) where `name` is `x ** 3`: `Pow(x, 3)`, or `Mul(x, Mul(x, x))` in any order."""
    index = view.producer(name)
    if view.is_op(index, "Pow"):
        base, exponent = view.nodes[index].input
        return (base, {index}) if view.near(exponent, 3.0) else None
    if not view.is_op(index, "Mul"):
        return None
    for square, x in (view.nodes[index].input, reversed(view.nodes[index].input)):
        inner = view.producer(square)
        if view.is_op(inner, "Mul") and list(view.nodes[inner].input) == [x, x]:
            return x, {index, inner}
    return None


@_pattern("Tanh", "gelu")
def _gelu_tanh(view: _View, index: int) -> Match | None:
    """`Tanh` of `sqrt(2/pi) * (x + 0.044715 * x**3)`, then the GELU tail."""
    if not any(spec.name == "approximate" for spec in REGISTRY["gelu"].attrs):
        return None
    scaled = view.producer(view.nodes[index].input[0])
    if not view.is_op(scaled, "Mul"):
        return None
    inner = view.producer(_scalar_factor(view, scaled, math.sqrt(2.0 / math.pi)) or "")
    if not view.is_op(inner, "Add"):
        return None
    for x, term in (view.nodes[inner].input, reversed(view.nodes[inner].input)):
        product = view.producer(term)
        if not view.is_op(product, "Mul"):
            continue
        cube = _cube(view, _scalar_factor(view, product, 0.044715) or "")
        if cube is not None and cube[0] == x:
            return _gelu(view, {scaled, inner, product, *cube[1]}, index, x,
                         {"approximate": "tanh"})
    return None


# SiLU and hardswish -------------------------------------------------------------------------


def _times_self(view: _View, index: int, op: str) -> Match | None:
    """`Mul(x, f(x))` for the one-input node `index` computing f."""
    x, computed = view.nodes[index].input[0], view.nodes[index].output[0]
    user = view.only_user(computed)
    if not view.is_op(user, "Mul") or view.other(user, computed) != x or not view.is_tensor(x):
        return None
    return Match(op, x, view.nodes[user].output[0], frozenset({index, user}))


@_pattern("Sigmoid", "silu")
def _silu(view: _View, index: int) -> Match | None:
    return _times_self(view, index, "silu")


@_pattern("HardSigmoid", "hardswish")
def _hardswish(view: _View, index: int) -> Match | None:
    """PyTorch's hardswish is x * relu6(x + 3) / 6: HardSigmoid with alpha 1/6, beta 0.5."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in view.nodes[index].attribute}
    alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    if abs(alpha - 1.0 / 6.0) > 1e-6 or abs(beta - 0.5) > 1e-6:
        return None
    return _times_self(view, index, "hardswish")


# Normalisation ------------------------------------------------------------------------------


def _affine(view: _View, normalised: int, op: str, x: str, nodes: set[int], axis: int,
            attrs: Mapping[str, Any], with_bias: bool) -> Match:
    """The match ending at node `normalised`, with a following `Mul weight` (and, `with_bias`,
    `Add bias`) taken in as the layer's parameters; ones (and zeros) without them."""
    output = view.nodes[normalised].output[0]
    params: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    for name, op_type in (("weight", "Mul"), ("bias", "Add"))[:2 if with_bias else 1]:
        user = view.only_user(output)
        source = view.other(user, output) if view.is_op(user, op_type) else None
        vector = view.vector(source)
        if user is None or source is None or vector is None:
            break
        nodes.add(user)
        output = view.nodes[user].output[0]
        params[name], sources[name] = vector, source
    params.setdefault("weight", np.ones(1, np.float32))
    if with_bias:
        params.setdefault("bias", np.zeros(1, np.float32))
    return Match(op, x, output, frozenset(nodes), attrs, params, sources, axis)


def _eps_sqrt(view: _View, mean: int) -> tuple[float, int, int] | None:
    """(eps, the Add, the Sqrt) of `sqrt(mean + eps)` after the ReduceMean node `mean`."""
    add = view.only_user(view.nodes[mean].output[0])
    eps = view.importer.values.get(view.other(add, view.nodes[mean].output[0]) or "") \
        if view.is_op(add, "Add") else None
    if add is None or not isinstance(eps, np.ndarray) or eps.size != 1 or eps.dtype.kind != "f":
        return None
    root = view.only_user(view.nodes[add].output[0])
    if not view.is_op(root, "Sqrt"):
        return None
    return float(eps.reshape(())), add, root


def _squared(view: _View, index: int | None, x: str) -> bool:
    """Node `index` is `x ** 2` (`Pow(x, 2)` or `Mul(x, x)`)."""
    if view.is_op(index, "Pow"):
        base, exponent = view.nodes[index].input
        return base == x and view.near(exponent, 2.0)
    return view.is_op(index, "Mul") and list(view.nodes[index].input) == [x, x]


@_pattern("ReduceMean", "layernorm")
def _layernorm(view: _View, index: int) -> Match | None:
    """`(x - mean(x)) / sqrt(mean((x - mean(x))**2) + eps)`, over one axis."""
    axis = view.reduced_axis(index)
    x, mean = view.nodes[index].input[0], view.nodes[index].output[0]
    sub = view.only_user(mean)
    if axis is None or not view.is_tensor(x) or not view.is_op(sub, "Sub") or \
            list(view.nodes[sub].input) != [x, mean]:
        return None
    centred = view.nodes[sub].output[0]
    users = set(view.importer.users.get(centred, []))
    square = next((user for user in users if _squared(view, user, centred)), None)
    divide = next((user for user in users if user != square), None)
    if square is None or divide is None or len(users) != 2:
        return None
    variance = view.only_user(view.nodes[square].output[0])
    if not view.is_op(variance, "ReduceMean") or view.reduced_axis(variance) != axis:
        return None
    found = _eps_sqrt(view, variance)
    if found is None or not view.is_op(divide, "Div") or \
            list(view.nodes[divide].input) != [centred, view.nodes[found[2]].output[0]]:
        return None
    eps, add, root = found
    nodes = {index, sub, square, variance, add, root, divide}
    return _affine(view, divide, "layernorm", x, nodes, axis, {"eps": eps}, with_bias=True)


@_pattern("Pow", "rmsnorm")
@_pattern("Mul", "rmsnorm")
def _rmsnorm(view: _View, index: int) -> Match | None:
    """`x * (1 / sqrt(mean(x**2) + eps))` (or `x / sqrt(...)`), over one axis."""
    x = view.nodes[index].input[0]
    mean = view.only_user(view.nodes[index].output[0])
    if not _squared(view, index, x) or not view.is_tensor(x) or \
            not view.is_op(mean, "ReduceMean"):
        return None
    axis = view.reduced_axis(mean)
    found = _eps_sqrt(view, mean)
    if axis is None or found is None:
        return None
    eps, add, root = found
    nodes = {index, mean, add, root}
    root_output = view.nodes[root].output[0]
    user = view.only_user(root_output)
    if view.is_op(user, "Reciprocal"):  # x * (1 / root)
        nodes.add(user)
        scale = view.only_user(view.nodes[user].output[0])
        if not view.is_op(scale, "Mul") or view.other(scale, view.nodes[user].output[0]) != x:
            return None
    elif view.is_op(user, "Div") and list(view.nodes[user].input) == [x, root_output]:
        scale = user
    else:
        return None
    nodes.add(scale)
    return _affine(view, scale, "rmsnorm", x, nodes, axis, {"eps": eps}, with_bias=False)


# Attention ----------------------------------------------------------------------------------


def _key(view: _View, name: str) -> tuple[str, bool, set[int]]:
    """(the key, whether `name` is it with its last two axes swapped, nodes taken): the
    dynamo exporter writes `k^T` of [N, H, S, D] as Reshape [N*H, S, D], Transpose [0, 2, 1],
    Reshape [N, H, D, S], which moves the batch; that chain is taken in and k used directly."""
    last = view.producer(name)
    swap = view.producer(view.nodes[last].input[0]) if view.is_op(last, "Reshape") else None
    first = view.producer(view.nodes[swap].input[0]) if view.is_op(swap, "Transpose") else None
    if last is not None and swap is not None and view.is_op(first, "Reshape") and \
            [list(a.ints) for a in view.nodes[swap].attribute if a.name == "perm"] == [[0, 2, 1]]:
        return view.nodes[first].input[0], False, {first, swap, last}
    return name, True, set()


def _from_shapes(view: _View, name: str, depth: int = 0) -> bool:
    """Whether `name` is a constant, or computed from constants and tensor shapes only (so
    known once the `Shape` nodes are translated, whatever the batch)."""
    if isinstance(view.importer.values.get(name), np.ndarray):
        return True
    index = view.producer(name)
    if index is None or depth > 32:
        return False
    node = view.nodes[index]
    return node.op_type == "Shape" or all(_from_shapes(view, source, depth + 1)
                                          for source in node.input if source)


def _unscaled(view: _View, name: str, factors: list[str], nodes: set[int]) -> str:
    """`name` without a `Mul` by a factor known before run time (now, or once shapes are
    translated): the factor goes to `factors`, the Mul to `nodes`."""
    index = view.producer(name)
    if not view.is_op(index, "Mul") or view.only_user(name) is None:
        return name
    for tensor, factor in (view.nodes[index].input, reversed(view.nodes[index].input)):
        if _from_shapes(view, factor) and not _from_shapes(view, tensor):
            factors.append(factor)
            nodes.add(index)
            return tensor
    return name


def _scalar(value: Any) -> float | None:
    if not isinstance(value, np.ndarray) or value.size != 1 or value.dtype.kind != "f":
        return None
    return float(value.reshape(()))


def _is_causal(value: Any) -> bool:
    """Whether `value` is the mask `is_causal` adds: 0 where j <= i, -inf (or the float32
    minimum, as the dynamo exporter writes it) above, over the last two axes."""
    if not isinstance(value, np.ndarray) or value.ndim < 2 or \
            value.size != value.shape[-1] * value.shape[-2]:
        return False
    square = value.reshape(value.shape[-2:])
    allowed = np.tril(np.ones(square.shape, dtype=bool))
    return bool(np.all(square[allowed] == 0) and
                np.all(square[~allowed] <= np.finfo(np.float32).min))


def _attention_attrs(factors: Sequence[str], divisors: Sequence[str], mask: str | None
                     ) -> Callable[[Mapping[str, Any]], Mapping[str, Any] | None]:
    """Attention's `scale` (the product of `factors` over that of `divisors`) and `causal`
    (`mask` is the causal mask), from values that shape arithmetic computes."""
    def resolve(values: Mapping[str, Any]) -> Mapping[str, Any] | None:
        numbers = [_scalar(values.get(name)) for name in (*factors, *divisors)]
        known = [number for number in numbers if number is not None]
        if len(known) != len(numbers) or 0.0 in known[len(factors):] or \
                (mask is not None and not _is_causal(values.get(mask))):
            return None
        scale = math.prod(known[:len(factors)]) / math.prod(known[len(factors):])
        if not math.isfinite(scale):
            return None
        return {"scale": scale, "causal": mask is not None}
    return resolve


@_pattern("Softmax", "attention")
def _attention(view: _View, index: int) -> Match | None:
    """`Softmax(q k^T * scale [+ causal mask]) v`, as both exporters write
    `scaled_dot_product_attention`."""
    softmax = view.nodes[index]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in softmax.attribute}
    if view.importer.opset < 13 or int(attrs.get("axis", -1)) != -1:
        return None
    nodes = {index}
    scores, mask = softmax.input[0], None
    masked = view.producer(scores)
    if view.is_op(masked, "Add"):
        first, second = view.nodes[masked].input
        scores, mask = (second, first) if _from_shapes(view, first) else (first, second)
        if not _from_shapes(view, mask):
            return None  # a mask computed at run time
        nodes.add(masked)
    factors: list[str] = []
    divisors: list[str] = []
    scaled = view.producer(scores)
    if view.is_op(scaled, "Div") and _from_shapes(view, view.nodes[scaled].input[1]):
        scores, divisor = view.nodes[scaled].input
        divisors.append(divisor)
        nodes.add(scaled)
    else:
        scores = _unscaled(view, scores, factors, nodes)
    product = view.producer(scores)
    output = view.only_user(softmax.output[0])
    if not view.is_op(product, "MatMul") or not view.is_op(output, "MatMul") or \
            view.nodes[output].input[0] != softmax.output[0]:
        return None
    q = _unscaled(view, view.nodes[product].input[0], factors, nodes)
    key, swapped, chain = _key(view, _unscaled(view, view.nodes[product].input[1], factors,
                                               nodes))
    value = view.nodes[output].input[1]
    if any(_from_shapes(view, name) for name in (q, key, value)):
        return None
    return Match("attention", q, view.nodes[output].output[0],
                 frozenset(nodes | chain | {product, output}), operands=(key, value),
                 swapped=frozenset({1} if swapped else ()),
                 resolve=_attention_attrs(factors, divisors, mask))
