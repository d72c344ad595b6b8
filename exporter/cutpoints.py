"""Valid split points of a model, found from its traced graph.

A model is traced with ``torch.fx``.  Walking the graph's nodes in order, a
point after node ``n`` is a valid cut when ``n``'s value is the *only* value
computed so far that is still needed later: exactly one tensor crosses from
head to tail.  Inside a residual block the block's input is still needed by the
skip connection, so those points are not valid; after the block's final
activation they are.  Parameters and buffers (``get_attr`` nodes) do not count
as crossing: the tail holds its own copy.

Modules whose ``forward`` does arithmetic of its own (a residual block's add,
a squeeze-excitation's scale) are kept whole: a point strictly inside such a
module's call is not offered, even when a single tensor crosses there.
Containers (``nn.Sequential``) may be cut between their children.

Point 0 is the input (everything on the cloud); the last point is the model's
output (everything on the edge).  For the seed's CIFAR ResNet-50 this gives
exactly the seed's points 0..22 (3 for conv1's conv/bn/relu, one per bottleneck
block, avg_pool, flatten, fc).
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torch.utils.flop_counter import FlopCounterMode

from .errors import ExportError

_DTYPE_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2, torch.float64: 8,
                torch.int64: 8, torch.int32: 4, torch.uint8: 1, torch.int8: 1, torch.bool: 1}


class CutPoint:
    """One valid split point: what crosses the wire there and what the head costs."""

    def __init__(self, index: int, name: str, node: str, shape: Tuple[int, ...], dtype: torch.dtype,
                 params: int, flops: int):
        self.index = index
        self.name = name          # module path (or graph node name) whose output crosses
        self.node = node          # the fx node name
        self.shape = shape        # per sample, without the batch dimension
        self.dtype = dtype
        self.params = params      # cumulative parameters of the head
        self.flops = flops        # cumulative FLOPs of the head, one sample

    @property
    def bytes_per_sample(self) -> int:
        numel = 1
        for d in self.shape:
            numel *= d
        return numel * _DTYPE_BYTES.get(self.dtype, 4)

    def as_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "node": self.node, "shape": list(self.shape),
                "dtype": str(self.dtype).replace("torch.", ""), "bytes_per_sample": self.bytes_per_sample,
                "head_params": self.params, "head_flops": self.flops}


class _FlopsPerNode(fx.Interpreter):
    """Runs the graph once, counting FLOPs of each node with torch's own FlopCounterMode."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.flops: Dict[str, int] = {}

    def run_node(self, n: fx.Node):
        counter = FlopCounterMode(display=False)
        with counter:
            result = super().run_node(n)
        self.flops[n.name] = counter.get_total_flops()
        return result


def _scopes(node: fx.Node) -> List[str]:
    """Module paths whose forward (directly or through children) produced this node, outermost first."""
    return [path for path, _ in (node.meta.get("nn_module_stack") or {}).values()]


def _node_label(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if node.op == "call_module":
        return str(node.target)
    if stack:
        return list(stack.values())[-1][0]
    return node.name


class TracedModel:
    """A model traced into a graph, with its valid cut points and head/tail builders."""

    def __init__(self, model: nn.Module, input_shape: Tuple[int, ...]):
        self.model = model.eval()
        self.input_shape = tuple(input_shape)
        try:
            self.gm = fx.symbolic_trace(self.model)
        except Exception as exc:
            raise ExportError("cannot trace the model into a graph with torch.fx ({}: {}); models with "
                              "data-dependent control flow need it moved out of forward()".format(
                                  type(exc).__name__, str(exc).splitlines()[0][:300]))
        self.nodes: List[fx.Node] = list(self.gm.graph.nodes)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ExportError("the model's forward takes {} inputs; split inference needs exactly one".format(
                len(placeholders)))
        self._input = placeholders[0]
        self._output = self.nodes[-1]
        example = torch.zeros((2,) + self.input_shape)
        with torch.no_grad():
            try:
                ShapeProp(self.gm).propagate(example)
            except Exception as exc:
                raise ExportError("the model fails on an input of shape {} ({}: {}); check --input-shape".format(
                    tuple(example.shape[1:]), type(exc).__name__, str(exc).splitlines()[0][:300]))
            counter = _FlopsPerNode(self.gm)
            counter.run(example[:1])
        out = self._output.args[0]
        if not isinstance(out, fx.Node) or not isinstance(out.meta.get("tensor_meta"), TensorMetadata):
            raise ExportError("the model's output is not a single tensor; split inference needs one output tensor")
        self.points = self._find_points(counter.flops)

    def _find_points(self, flops: Dict[str, int]) -> List[CutPoint]:
        position = {n: i for i, n in enumerate(self.nodes)}
        last_use = {n: max((position[u] for u in n.users), default=-1) for n in self.nodes}
        seen_params = set()
        params = 0
        total_flops = 0
        meta = self._input.meta["tensor_meta"]
        points = [CutPoint(0, "input", self._input.name, tuple(meta.shape[1:]), meta.dtype, 0, 0)]
        # modules that compute something themselves, besides calling children: never cut inside them
        functional = {_scopes(n)[-1] for n in self.nodes
                      if n.op in ("call_function", "call_method") and _scopes(n)}
        compute = [n for n in self.nodes if n.op in ("call_module", "call_function", "call_method")]
        following = {a: b for a, b in zip(compute, compute[1:])}
        live = set()
        for i, node in enumerate(self.nodes):
            if node.op in ("placeholder", "output"):
                if node.op == "placeholder":
                    live.add(node)
                continue
            total_flops += flops.get(node.name, 0)
            params += self._new_params(node, seen_params)
            if node.op == "get_attr":
                continue  # weights are copied to whichever side needs them
            live = {n for n in live if last_use[n] > i}
            if last_use[node] > i:
                live.add(node)
            tm = node.meta.get("tensor_meta")
            nxt = following.get(node)
            inside = nxt is not None and functional & set(_scopes(node)) & set(_scopes(nxt))
            if live == {node} and isinstance(tm, TensorMetadata) and not inside:
                points.append(CutPoint(len(points), _node_label(node), node.name, tuple(tm.shape[1:]),
                                       tm.dtype, params, total_flops))
        out = self._output.args[0]
        if points[-1].node != out.name:
            raise ExportError("the model's output node {} is not the last single-tensor point of its graph; "
                              "cannot place the whole model on the edge".format(out.name))
        return points

    def _new_params(self, node: fx.Node, seen: set) -> int:
        tensors = []
        if node.op == "call_module":
            module = self.gm.get_submodule(node.target)
            tensors = list(module.parameters())
        elif node.op == "get_attr":
            value = getattr_path(self.gm, node.target)
            tensors = [value] if isinstance(value, nn.Parameter) else []
        count = 0
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                count += t.numel()
        return count

    def point(self, index: int) -> CutPoint:
        if not 0 <= index < len(self.points):
            raise ExportError("split {} is out of range; valid split points are 0..{} (see `cli.py layers`)".format(
                index, len(self.points) - 1))
        return self.points[index]

    def _node(self, name: str) -> fx.Node:
        return next(n for n in self.nodes if n.name == name)

    def between(self, first: int, last: int, input_name: str = "boundary") -> Optional[fx.GraphModule]:
        """The graph from point ``first`` to point ``last`` as a module; None when they are the same point."""
        if not 0 <= first <= last < len(self.points):
            raise ExportError("no part of the model lies between points {} and {}".format(first, last))
        if first == last:
            return None
        start = self._input if first == 0 else self._node(self.points[first].node)
        stop = self._node(self.points[last].node)
        body = self.nodes[self.nodes.index(start) + 1:self.nodes.index(stop) + 1]
        graph = fx.Graph()
        env: Dict[fx.Node, fx.Node] = {start: graph.placeholder(input_name)}

        def lookup(n: fx.Node) -> fx.Node:
            if n not in env:
                if n.op != "get_attr":
                    raise AssertionError("value {} crosses the cut".format(n.name))
                env[n] = graph.node_copy(n, lookup)
            return env[n]

        for node in body:
            if node.op != "get_attr":  # weights are copied on first use
                env[node] = graph.node_copy(node, lookup)
        graph.output(lookup(stop))
        return fx.GraphModule(self.gm, graph).eval()

    def head(self, index: int) -> Optional[fx.GraphModule]:
        """The part that runs on the edge: input -> boundary tensor; None at split 0."""
        return self.between(0, self.point(index).index, "input")

    def tail(self, index: int) -> Optional[fx.GraphModule]:
        """The part that runs on the cloud: boundary tensor -> output; None at the last split."""
        return self.between(self.point(index).index, len(self.points) - 1)

    def segment(self, index: int) -> fx.GraphModule:
        """Segment ``index``: from point ``index`` to point ``index + 1`` (what profiles time)."""
        return self.between(index, index + 1, "input" if index == 0 else "boundary")


def getattr_path(obj, target: str):
    for attr in target.split("."):
        obj = getattr(obj, attr)
    return obj
