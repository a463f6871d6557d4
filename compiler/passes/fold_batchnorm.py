"""fold_batchnorm: a batchnorm right after a conv2d or dense becomes that layer's weights.

In inference, batchnorm is y = (x - mean) * s + beta per channel with s = gamma / sqrt(var +
eps). After a conv2d (or a dense on [N, features], whose features are batchnorm's channel dim
1), it folds into the layer:

    weight' = weight * s  (per output channel)        bias' = (bias - mean) * s + beta

(bias = 0 for a layer without one; the folded layer always has a bias).

Fires on a batchnorm whose input is a conv2d, or a dense with a rank-2 output, that has no
other user and is not an output (otherwise the unnormalised value is still needed). Needs
`remove_dropout` before it (a dropout between the two would hide the pattern). Guarantees
after: no such pair is left. The folded tensors are new `param` nodes
(`<layer>.weight@folded`, `<layer>.bias@folded`) described by `WeightTransform`s, so this works
without weights; the old parameters go when nothing else reads them. The batchnorm's
computation is recorded as moved into the layer's node, which keeps its id.
"""

from __future__ import annotations

from collections import Counter

from netc.ir import Attrs, Graph, Node, TensorType
from netc.passes.pass_manager import Pass, PassContext
from netc.passes.rewrite import all_ids, fresh_id, output_ids, rebuild, unused
from netc.passes.weight_transforms import WeightTransform


def _foldable(layer: Node, users: list[Node], outputs: set[str]) -> bool:
    # Batchnorm normalises dim 1: a conv2d's filters, but a dense's features only at rank 2.
    shaped = layer.op == "conv2d" or (layer.op == "dense" and layer.type.rank == 2)
    return shaped and len(users) == 1 and layer.id not in outputs


def _fold_once(graph: Graph, context: PassContext, folded: Counter[str]) -> Graph:
    users = graph.users()
    outputs = output_ids(graph)
    taken = all_ids(graph)
    forward: dict[str, str] = {}
    replaced: dict[str, Node] = {}
    inserted: dict[str, list[Node]] = {}
    old_params: list[str] = []
    for norm in graph.nodes:
        if norm.op != "batchnorm":
            continue
        layer = graph[norm.inputs[0]]
        if layer.id in replaced or not _foldable(layer, users[layer.id], outputs):
            continue
        if layer.type.dtype != norm.type.dtype:
            continue
        weight = graph[layer.inputs[1]]
        bias = graph[layer.inputs[2]] if layer.attrs["bias"] else None
        statistics = norm.inputs[1:5]  # weight (gamma), bias (beta), running_mean, running_var
        stem = layer.layer or layer.id
        weight_id = fresh_id(taken, f"{stem}.weight@folded")
        bias_id = fresh_id(taken, f"{stem}.bias@folded")
        eps = float(norm.attrs["eps"])
        context.transforms.append(WeightTransform(
            weight_id, "batchnorm_weight", (weight.id, statistics[0], statistics[3]),
            Attrs(eps=eps)))
        context.transforms.append(WeightTransform(
            bias_id, "batchnorm_bias", ((bias.id,) if bias else ()) + statistics,
            Attrs(eps=eps, has_bias=bias is not None)))
        channels = weight.type.shape[0]
        inserted[layer.id] = [
            Node(weight_id, "param", (), Attrs(), weight.type, weight.span, layer.layer),
            Node(bias_id, "param", (), Attrs(), TensorType(weight.type.dtype, (channels,)),
                 bias.span if bias else weight.span, layer.layer),
        ]
        replaced[layer.id] = Node(layer.id, layer.op, (layer.inputs[0], weight_id, bias_id),
                                  layer.attrs.replace(bias=True), layer.type, layer.span,
                                  layer.layer)
        forward[norm.id] = layer.id
        context.moved(norm.id, layer.id)
        old_params.extend(layer.inputs[1:] + norm.inputs[1:])
        folded[layer.op] += 1
    if not replaced:
        return graph
    result = rebuild(graph, forward=forward, drop=forward, replace_nodes=replaced,
                     insert_before=inserted)
    return rebuild(result, drop=unused(result, old_params))


def fold_batchnorm(graph: Graph, context: PassContext) -> Graph:
    folded: Counter[str] = Counter()
    while True:  # conv |> batchnorm |> batchnorm folds twice
        result = _fold_once(graph, context, folded)
        if result is graph:
            break
        graph = result
    if folded:
        total = sum(folded.values())
        into = " and ".join(f"{op} ({count})" if len(folded) > 1 else op
                            for op, count in sorted(folded.items()))
        context.report(f"folded {total} batchnorm{'s' if total != 1 else ''} into {into}")
    return graph


FOLD_BATCHNORM = Pass("fold_batchnorm", fold_batchnorm, requires=("remove_dropout",),
                      summary="fold batchnorm into the preceding conv2d or dense",
                      modes=("inference",))  # training normalises with batch statistics
