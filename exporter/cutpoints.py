"""Valid split points of a model, found from its traced graph.

A model is traced with ``torch.fx``.  Walking the graph's nodes in order, a
point after node ``n`` is a valid cut when ``n``'s value is the *only* value
computed so far that is still needed later: exactly one tensor crosses from
head to tail.  Inside a residual block the block's input is still needed by the
skip connection, so those points are not valid; after the block's final
activation they are.  Parameters and buffers (``get_attr`` nodes) do not count
as crossing: the tail holds its own copy.

A point lies between two modules' calls, or between two steps of one module's
own ``forward``.  The second kind is not offered where that module does
arithmetic of its own (a residual block's add, a squeeze-excitation's scale,
an encoder's position embedding), even when a single tensor crosses there: its
own steps are kept together.  Between its children a cut is offered like
anywhere else, so a transformer's encoder, which adds its position embedding
itself, is cut after each of its blocks.  Concretely, for the next computing
node ``m``, take the innermost module whose call holds both ``n`` and ``m``:
when that module computes something itself and ``n`` is one of its own steps
(not the end of one of its children's calls), the point is not offered.

Each point is named by the module whose output crosses there: the innermost
module whose call ends at ``n`` (a block, not the block's last ReLU), e.g.
``conv2_x.2`` or ``encoder.layers.encoder_layer_5``; a step of the model's own
``forward`` by its graph node (``flatten``).  ``of`` says what that is (the
module's class, or the function).

Point 0 is the input (everything on the cloud); the last point is the model's
output (everything on the edge).  For the seed's CIFAR ResNet-50 this gives
exactly the seed's points 0..22 (3 for conv1's conv/bn/relu, one per bottleneck
block, avg_pool, flatten, fc).
"""
import operator
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torch.utils.flop_counter import FlopCounterMode

from runtime.bundle.schema import resolve_split
from runtime.errors import UserError

from .errors import ExportError

_DTYPE_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2, torch.float64: 8,
                torch.int64: 8, torch.int32: 4, torch.uint8: 1, torch.int8: 1, torch.bool: 1}


@dataclass
class CutPoint:
    """One valid split point: what crosses the wire there and what the head costs."""

    index: int
    name: str                 # module path (or graph node name) whose output crosses
    node: str                 # the fx node name
    shape: Tuple[int, ...]    # per sample, without the batch dimension
    dtype: torch.dtype
    params: int               # cumulative parameters of the head
    flops: int                # cumulative FLOPs of the head, one sample
    of: str = ""              # what ``name`` is: the module's class or the function
    ends: Tuple[str, ...] = ()  # every module whose call ends here, outermost first (``--split`` takes each)
    outputs: Tuple[dict, ...] = ()  # the last point of a model of several outputs: each (as MultiCut.tensors)

    @property
    def id(self) -> int:
        """What ``--split`` and a bundle's directory call it (a MultiCut's is ``"K.J"``)."""
        return self.index

    @property
    def bytes_per_sample(self) -> int:
        if self.outputs:
            return sum(t["bytes_per_sample"] for t in self.outputs)
        numel = 1
        for d in self.shape:
            numel *= d
        return numel * _DTYPE_BYTES.get(self.dtype, 4)

    def as_dict(self) -> dict:
        out = {"index": self.index, "name": self.name, "of": self.of, "node": self.node, "ends": list(self.ends),
               "shape": list(self.shape), "dtype": str(self.dtype).replace("torch.", ""),
               "bytes_per_sample": self.bytes_per_sample, "head_params": self.params, "head_flops": self.flops}
        if self.outputs:
            out["tensors"] = list(self.outputs)
        return out


@dataclass
class MultiCut:
    """A cut where several tensors cross (``cli.py layers --max-tensors K``): between single-tensor points ``after``
    and ``after + 1``, numbered ``"{after}.{j}"`` so that the single-tensor points keep their numbers."""

    id: str
    after: int                # the single-tensor point before it
    name: str                 # the module (or node) after whose output it lies
    node: str
    tensors: List[dict]       # what crosses, in graph order: name, node, shape (per sample), dtype, bytes_per_sample
    params: int
    flops: int

    @property
    def bytes_per_sample(self) -> int:
        return sum(t["bytes_per_sample"] for t in self.tensors)

    def as_dict(self) -> dict:
        return {"index": self.id, "after": self.after, "name": self.name, "node": self.node, "tensors": self.tensors,
                "shape": None, "bytes_per_sample": self.bytes_per_sample, "head_params": self.params,
                "head_flops": self.flops}


MAX_TENSORS = 8  # the most tensors a listed cut may have


def boundary_names(count: int, base: str = "boundary") -> List[str]:
    """The names of the tensors crossing a cut, as the compiled head returns them and the tail takes them:
    ``boundary`` alone, or ``boundary_0``, ``boundary_1``, ... in graph order."""
    return [base] if count == 1 else ["{}_{}".format(base, i) for i in range(count)]


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


def _stack(node: Optional[fx.Node]) -> List[Tuple[str, type]]:
    """(module path, module class) of the module calls that hold this node, outermost first."""
    if node is None:
        return []
    return [(path, kind) for path, kind in (node.meta.get("nn_module_stack") or {}).values()]


def _scopes(node: Optional[fx.Node]) -> List[str]:
    """Module paths whose forward (directly or through children) produced this node, outermost first."""
    return [path for path, _ in _stack(node)]


def _common_depth(a: List[str], b: List[str]) -> int:
    """How many outer module calls two nodes share."""
    depth = 0
    while depth < min(len(a), len(b)) and a[depth] == b[depth]:
        depth += 1
    return depth


def _own_step(node: fx.Node, nxt: Optional[fx.Node], functional: set) -> bool:
    """Whether a point after ``node`` would fall between two of one module's own steps, in a module that computes
    something itself (see the module's docstring)."""
    mine, theirs = _scopes(node), _scopes(nxt)
    depth = _common_depth(mine, theirs)
    if depth == 0:
        return False  # the model's own forward: cut anywhere
    holder = mine[depth - 1]
    return holder in functional and len(mine) == depth


def _function_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return "Tensor." + str(node.target)
    target = node.target
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", str(target))
    return "{}.{}".format({"_operator": "operator", "torch._C._nn": "torch.nn.functional"}.get(module, module),
                          name) if module else name


def _point_name(node: fx.Node, nxt: Optional[fx.Node]) -> Tuple[str, str, Tuple[str, ...]]:
    """(name, of, ends) of the point after ``node``: the innermost module whose call ends there, past a leaf module
    that is only the last step of a larger one (a block's final ReLU names the block); else the graph node.  ``ends``
    lists every module whose call ends there."""
    ended = _stack(node)[_common_depth(_scopes(node), _scopes(nxt)):]
    ends = tuple(path for path, _ in ended)
    if node.op == "call_module" and len(ended) > 1:
        ended = ended[:-1]
    if ended:
        path, kind = ended[-1]
        return path, getattr(kind, "__name__", str(kind)), ends
    if node.target is operator.getitem and isinstance(node.args[0], fx.Node):
        return "{}[{}]".format(_value_name(node.args[0]), _index_text(node.args[1])), "operator.getitem", ends
    return node.name, _function_name(node) if node.op in ("call_function", "call_method") else node.op, ends


def _value_name(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


def _index_text(index) -> str:
    """``x[:, 0]``'s index as written."""
    if isinstance(index, tuple):
        return ", ".join(_index_text(i) for i in index)
    if isinstance(index, slice):
        return ":".join("" if v is None else _index_text(v) for v in (index.start, index.stop)) + (
            "" if index.step is None else ":" + _index_text(index.step))
    if index is Ellipsis:
        return "..."
    return index.name if isinstance(index, fx.Node) else repr(index)


class _Tracer(fx.Tracer):
    """torch.fx's tracer, calling modules of the ``leaves`` classes whole (as it does torch's own layers)."""

    def __init__(self, leaves: Tuple[type, ...] = ()):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def _leaf_classes(model: nn.Module, names: Sequence[str]) -> Tuple[type, ...]:
    """The module classes named ``names`` (``--leaf-module C2f``) among ``model``'s modules."""
    classes = {type(m).__name__: type(m) for m in model.modules()}
    missing = [n for n in names if n not in classes]
    if missing:
        raise ExportError("--leaf-module {}: the model has no module of that class; its classes: {}".format(
            ", ".join(missing), ", ".join(sorted(classes))))
    return tuple(classes[n] for n in names)


class _Sizes(fx.Interpreter):
    """Runs the graph, keeping the value of each node that computes a size: an int or a bool, or a tuple of ints."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.sizes: Dict[fx.Node, object] = {}

    def run_node(self, n: fx.Node):
        value = super().run_node(n)
        if n.op in ("call_function", "call_method") and _is_size(value):
            self.sizes[n] = tuple(value) if isinstance(value, tuple) else value
        return value


def _is_size(value) -> bool:
    if isinstance(value, tuple):
        return all(isinstance(v, int) for v in value)
    return isinstance(value, int)


FOLD_BATCHES = (2, 3, 7)  # a size equal at all three does not depend on the batch


def fold_static_sizes(gm: fx.GraphModule, input_shape: Tuple[int, ...]) -> int:
    """Replace each size computed from a tensor's shape that does not depend on the batch (an interpolation's output
    size ``x.shape[-2:]``, an assert on the image's height) by its value; return how many.

    The exporter fixes one sample's shape, so such a size is a constant of the export; left as computed, it would
    keep the tensor it is read from alive to the end, and a segmentation model, which reads its input's height and
    width to upsample its output, would have no cut point at all.  A size is taken as independent of the batch when
    it is the same for batches of 2, 3 and 7; sizes that do depend on it (``x.shape[0]``) stay computed."""
    runs = []
    for batch in FOLD_BATCHES:
        sizes = _Sizes(gm)
        sizes.run(torch.zeros((batch,) + tuple(input_shape)))
        runs.append(sizes.sizes)
        if not runs[0]:
            return 0
    folded = 0
    for node in list(gm.graph.nodes):
        if node not in runs[0] or not node.users or any(run.get(node, object()) != runs[0][node] for run in runs):
            continue
        value = runs[0][node]
        for user in list(node.users):
            user.args = fx.node.map_arg(user.args, lambda a, n=node, v=value: v if a is n else a)
            user.kwargs = fx.node.map_arg(user.kwargs, lambda a, n=node, v=value: v if a is n else a)
        folded += 1
    if folded:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return folded


class TracedModel:
    """A model traced into a graph, with its valid cut points and head/tail builders."""

    def __init__(self, model: nn.Module, input_shape: Tuple[int, ...], leaf_modules: Sequence[str] = ()):
        self.model = model.eval()
        self.input_shape = tuple(input_shape)
        tracer = _Tracer(_leaf_classes(self.model, leaf_modules))
        try:
            graph = tracer.trace(self.model)
            self.gm = fx.GraphModule(tracer.root, graph, type(self.model).__name__)
        except Exception as exc:
            raise ExportError("cannot trace the model into a graph with torch.fx ({}: {}); {}".format(
                type(exc).__name__, str(exc).splitlines()[0].split(". ")[0][:200] if str(exc) else "",
                trace_hint(exc)))
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ExportError("the model's forward takes {} inputs; split inference needs exactly one".format(
                len(placeholders)))
        example = torch.zeros((2,) + self.input_shape)
        with torch.no_grad():
            try:
                fold_static_sizes(self.gm, self.input_shape)
                ShapeProp(self.gm).propagate(example)
            except Exception as exc:
                raise ExportError("the model fails on an input of shape {} ({}: {}); check --input-shape".format(
                    tuple(example.shape[1:]), type(exc).__name__, str(exc).splitlines()[0][:300]))
            counter = _FlopsPerNode(self.gm)
            counter.run(example[:1])
        self.nodes: List[fx.Node] = list(self.gm.graph.nodes)
        self._input = placeholders[0]
        self._output = self.nodes[-1]
        self.output_paths, self.output_names = self._outputs()
        self.output_path = self.output_paths[0] if len(self.output_paths) == 1 else None
        self.points = self._find_points(counter.flops)

    def _outputs(self) -> Tuple[List[Tuple], List[str]]:
        """The model's output tensors made the graph's output (one node, or a tuple of them), with the keys that
        lead to each in what the model returns (``("out",)`` for a segmentation model's ``{"out": tensor}``, ``()``
        for a tensor) and the names they are exported under (``output``; or the dict's keys, ``output_0``, ...)."""
        out, path = self._output.args[0], ()
        while isinstance(out, (dict, tuple, list)) and len(out) == 1:
            key = next(iter(out)) if isinstance(out, dict) else 0
            out, path = out[key], path + (key,)
        if _is_tensor(out):
            if path:
                self._output.args = (out,)
                self.gm.recompile()
            return [path], ["output"]
        keys = list(out) if isinstance(out, dict) else list(range(len(out))) if isinstance(out, (tuple, list)) else []
        if not keys or not all(_is_tensor(out[k]) for k in keys):
            kind = _kind(out)
            inner = sorted({_kind(out[k]) for k in keys if not _is_tensor(out[k])})
            what = "{} of {} holding {}".format(kind, len(out), ", ".join(inner)) if keys else kind
            raise ExportError("the model's output is a {}; a tail returns tensors (one, or a flat dict, tuple or list "
                              "of them): wrap the model so that it returns those (a detector in eval mode returns "
                              "a list of dicts per image: export its backbone, or its raw head outputs)".format(what))
        names = [str(k) if isinstance(k, str) and k.isidentifier() and k != "input" else "output_{}".format(i)
                 for i, k in enumerate(keys)]
        if len(set(names)) < len(names):
            names = ["output_{}".format(i) for i in range(len(keys))]
        self._output.args = (tuple(out[k] for k in keys),)
        self.gm.recompile()
        return [path + (k,) for k in keys], names

    def reference(self, x: torch.Tensor):
        """The unsplit model's output for ``x``: its tensor, or the tuple of its tensors (``output_paths``), what
        every export is verified against."""
        y = self.model(x)
        outputs = []
        for path in self.output_paths:
            value = y
            for key in path:
                value = value[key]
            outputs.append(value)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _find_points(self, flops: Dict[str, int]) -> List[CutPoint]:
        position = {n: i for i, n in enumerate(self.nodes)}
        last_use = {n: max((position[u] for u in n.users), default=-1) for n in self.nodes}
        seen_params = set()
        params = 0
        total_flops = 0
        meta = self._input.meta["tensor_meta"]
        points = [CutPoint(0, "input", self._input.name, tuple(meta.shape[1:]), meta.dtype, 0, 0, "the model's input")]
        # modules that compute something themselves, besides calling children: never cut between their own steps
        functional = {_scopes(n)[-1] for n in self.nodes
                      if n.op in ("call_function", "call_method") and _scopes(n)}
        compute = [n for n in self.nodes if n.op in ("call_module", "call_function", "call_method")]
        following = {a: b for a, b in zip(compute, compute[1:])}
        live = set()
        self.multi: List[MultiCut] = []
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
            if _own_step(node, nxt, functional) or not isinstance(tm, TensorMetadata):
                continue
            if live == {node}:
                name, of, ends = _point_name(node, nxt)
                points.append(CutPoint(len(points), name, node.name, tuple(tm.shape[1:]), tm.dtype, params,
                                       total_flops, of, ends))
            elif 1 < len(live) <= MAX_TENSORS and all(isinstance(n.meta.get("tensor_meta"), TensorMetadata)
                                                      for n in live):
                after = len(points) - 1
                number = sum(1 for c in self.multi if c.after == after) + 1
                crossing = [self._crossing(n, following) for n in sorted(live, key=position.get)]
                self.multi.append(MultiCut("{}.{}".format(after, number), after, _point_name(node, nxt)[0],
                                           node.name, crossing, params, total_flops))
        out = self._output.args[0]
        if isinstance(out, tuple):
            return self._with_outputs(points, out, position, params, total_flops)
        if points[-1].node != out.name:
            raise ExportError("the model's output node {} is not the last single-tensor point of its graph; "
                              "cannot place the whole model on the edge".format(out.name))
        return points

    def _with_outputs(self, points, outputs, position, params, flops) -> List[CutPoint]:
        """``points`` ended by the point of a model of several outputs: all of them, after the last computed; the
        walk's cut there (the same tensors) is that point, not a cut of its own."""
        last = max(outputs, key=position.get)
        specs = [dict(spec, name=name, source=spec["name"])
                 for spec, name in zip((self._crossing(n, {}) for n in outputs), self.output_names)]
        self.multi = [c for c in self.multi if c.node != last.name]
        tm = last.meta["tensor_meta"]
        points.append(CutPoint(len(points), "output", last.name, tuple(tm.shape[1:]), tm.dtype, params, flops,
                               "the model's {} outputs ({})".format(len(outputs), ", ".join(self.output_names)),
                               (), tuple(specs)))
        return points

    @staticmethod
    def _crossing(node: fx.Node, following: Dict[fx.Node, fx.Node]) -> dict:
        """One tensor of a multi-tensor cut, named as a point after it would be."""
        tm = node.meta["tensor_meta"]
        name = "input" if node.op == "placeholder" else _point_name(node, following.get(node))[0]
        shape = tuple(tm.shape[1:])
        numel = 1
        for d in shape:
            numel *= d
        return {"name": name, "node": node.name, "shape": list(shape), "dtype": str(tm.dtype).replace("torch.", ""),
                "bytes_per_sample": numel * _DTYPE_BYTES.get(tm.dtype, 4)}

    def cuts(self, max_tensors: int) -> List[object]:
        """The single-tensor points and the cuts where up to ``max_tensors`` tensors cross, in graph order."""
        extra = {}
        for cut in self.multi:
            if len(cut.tensors) <= max_tensors:
                extra.setdefault(cut.after, []).append(cut)
        ordered = []
        for point in self.points:
            ordered.append(point)
            ordered.extend(extra.get(point.index, ()))
        return ordered

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
        return self.cut(str(index))

    def _node(self, name: str) -> fx.Node:
        return next(n for n in self.nodes if n.name == name)

    def between(self, first: int, last: int, input_name: str = "boundary") -> Optional[fx.GraphModule]:
        """The graph from point ``first`` to point ``last`` as a module; None when they are the same point."""
        if not 0 <= first <= last < len(self.points):
            raise ExportError("no part of the model lies between points {} and {}".format(first, last))
        return self.span(self.points[first], self.points[last], (input_name,))

    def crossing(self, cut) -> List[fx.Node]:
        """The nodes whose values cross ``cut`` (a CutPoint or a MultiCut), in graph order."""
        if isinstance(cut, MultiCut):
            return [self._node(t["node"]) for t in cut.tensors]
        if cut.outputs:
            return [self._node(t["node"]) for t in cut.outputs]
        return [self._node(cut.node)]  # point 0's node is the input placeholder

    def span(self, start, stop, input_names: Sequence[str]) -> Optional[fx.GraphModule]:
        """The graph from cut ``start`` to cut ``stop`` (CutPoints or MultiCuts) as a module: it takes the tensors
        that cross ``start`` (named ``input_names``) and returns those that cross ``stop`` (one, or a tuple); None
        when the two are the same cut."""
        begin, end = self.nodes.index(self._node(start.node)), self.nodes.index(self._node(stop.node))
        if begin == end:
            return None
        if begin > end:
            raise ExportError("no part of the model lies between cuts {} and {}".format(start.id, stop.id))
        inputs = self.crossing(start)
        graph = fx.Graph()
        env: Dict[fx.Node, fx.Node] = {n: graph.placeholder(name) for n, name in zip(inputs, input_names)}

        def lookup(n: fx.Node) -> fx.Node:
            if n not in env:
                if n.op != "get_attr":
                    raise AssertionError("value {} crosses the cut".format(n.name))
                env[n] = graph.node_copy(n, lookup)
            return env[n]

        for node in self.nodes[begin + 1:end + 1]:
            if node.op not in ("get_attr", "placeholder", "output"):  # weights are copied on first use
                env[node] = graph.node_copy(node, lookup)
        outputs = [lookup(n) for n in self.crossing(stop)]
        graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
        return fx.GraphModule(self.gm, graph).eval()

    def cut(self, split: str):
        """The cut a ``--split`` value names (``schema.resolve_split``, the rule the edge's commands share): a
        CutPoint, or a MultiCut for a ``"K.J"`` id."""
        try:
            found = resolve_split(split, [p.as_dict() for p in self.points], [c.id for c in self.multi])
        except UserError as exc:
            raise ExportError(str(exc))
        return self.points[found] if isinstance(found, int) else next(c for c in self.multi if c.id == found)

    def head(self, cut) -> Optional[fx.GraphModule]:
        """The part that runs on the edge: input -> the tensor(s) crossing ``cut`` (a point's index, a CutPoint or
        a MultiCut); None at split 0."""
        return self.span(self.points[0], self.point(cut) if isinstance(cut, int) else cut, ("input",))

    def tail(self, cut, input_names: Optional[Sequence[str]] = None) -> Optional[fx.GraphModule]:
        """The part that runs on the cloud: the tensor(s) crossing ``cut`` (named ``input_names``, by default
        ``boundary_names``) -> output; None at the last split."""
        cut = self.point(cut) if isinstance(cut, int) else cut
        return self.span(cut, self.points[-1], input_names or boundary_names(len(self.crossing(cut))))

    def segment(self, index: int) -> fx.GraphModule:
        """Segment ``index``: from point ``index`` to point ``index + 1`` (what profiles time)."""
        return self.between(index, index + 1, "input" if index == 0 else "boundary")


# what torch.fx's refusals mean, by a phrase of their message: (phrase, what to do)
_TRACE_HINTS = (
    ("not installed as a submodule",
     "forward() calls a module it creates itself (such as nn.ReLU(inplace=True)(x)): create it in __init__, or "
     "use the functional form (F.relu)"),
    ("used as inputs to control flow",
     "forward() branches or loops on a tensor's value: move that control flow out of forward()"),
    ("cannot be iterated",
     "forward() iterates over a tensor or a shape (a detector's per-image pre- and post-processing do): split the "
     "part that has no such loop, with --trace-module (a torchvision detector: --trace-module backbone), or "
     "exported as a model of its own (--model package.module:function); a block that iterates over its own "
     "tensors (YOLOv8's C2f) can be called whole: --leaf-module CLASS"),
)


def trace_hint(exc: Exception) -> str:
    """What to do about torch.fx's refusal ``exc``, in a sentence."""
    message = str(exc)
    for phrase, hint in _TRACE_HINTS:
        if phrase in message:
            return hint
    return ("torch.fx traces forward() with symbolic values: data-dependent control flow, modules created in "
            "forward() and calls into non-torch code stop it; export a traceable part as a model of its own "
            "(--model package.module:function)")


def _kind(value) -> str:
    """What a traced output value is, in a word (fx's immutable containers by their plain names)."""
    if isinstance(value, fx.Node):
        return "non-tensor value"
    return next((k.__name__ for k in (dict, tuple, list) if isinstance(value, k)), type(value).__name__)


def _is_tensor(value) -> bool:
    return isinstance(value, fx.Node) and isinstance(value.meta.get("tensor_meta"), TensorMetadata)


def getattr_path(obj, target: str):
    for attr in target.split("."):
        obj = getattr(obj, attr)
    return obj
