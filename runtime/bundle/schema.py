"""The manifest's schema: the one contract between the exporter and the runtime.

Every field a manifest may hold is in ``FIELDS``, per bundle kind, with its type,
whether it is required, and the schema version that added it.  The exporter writes
manifests only through the builders below (``split_manifest``,
``segments_manifest`` and the specs they take), and the runtime checks every
manifest it reads, from a file or from the network, against the same table
(``check``) before ``manifest.validate`` checks what a table cannot say (file
names, the bundle id against the contents).

Evolution rules, as for ExecuTorch's program schema:

* Add fields; never remove or rename one, and never change a field's type or
  meaning.  A new field gets ``since`` = the version that adds it and is optional
  for readers, which must accept manifests written before it existed.
* A field that is no longer wanted is deprecated: still written, ignored by
  readers, marked deprecated here, and removed only with a version bump.
* A change that an older reader cannot ignore bumps ``SCHEMA_VERSION``; readers
  refuse any other version with a message that says to re-export.
* The bundle id covers the model id, the weights' sha256, the split and every
  file's sha256, so no field added later can change what a bundle id names.
* A writer stamps the lowest version that can say what the bundle holds, so a
  reader of an older release keeps reading every bundle it could read before.

Versions: 1, one tensor at the cut and one output.  2 adds cuts where several
tensors cross (``boundary.tensors``, ``split.cut`` = ``"K.J"``, the J-th such cut
after point K) and several outputs (``output.tensors``); a spec with ``tensors``
lists them in order, each a tensor spec of its own with ``source`` (what it is the
output of), and its own ``bytes_per_sample`` is their sum.  Only bundles that need
them are stamped 2.  2 also adds ``output.postprocess``: the tail ends with a detector's own
post-processing (``{"kind": "detections", "by", "score_thresh", "nms_thresh",
"detections_per_img"}``), and its outputs are ``boxes`` N x D x 4 (x1, y1, x2, y2 in the
input's pixels), ``scores`` N x D and ``labels`` N x D (int64), rows past an image's
detections padded with label -1 and score 0.

Python 3.6 syntax: this module runs on the Jetson.
"""
import hashlib

from runtime.errors import ManifestError, UserError

SCHEMA_VERSION = 2  # the newest version this runtime reads and the exporter writes
READABLE = (1, 2)
KIND_SPLIT, KIND_SEGMENTS = "split", "segments"
DETECTIONS = "detections"  # output.postprocess.kind: boxes, scores, labels per image
NUMBER = (int, float)
OPTIONAL_STR = (str, type(None))
# a tensor's spec: dtype, shape with None for the batch dimension
TENSOR = (("name", str, False), ("shape", list, True), ("dtype", str, True), ("bytes_per_sample", int, False))
# a spec of several tensors (version 2): {"name", "tensors": [tensor spec + "source", ...], "bytes_per_sample": sum}
SOURCE = ("source", str, False)

# kind -> (dotted field, type(s), required, since); a dict field's own fields follow it
_COMMON = (
    ("schema_version", int, True, 1),
    ("kind", str, False, 1),  # absent: "split"
    ("bundle_id", str, True, 1),
    ("created", str, False, 1),
    ("model", dict, True, 1),
    ("model.id", str, True, 1),
    ("model.source", OPTIONAL_STR, False, 1),
    ("model.notes", OPTIONAL_STR, False, 1),
    ("model.weights", dict, False, 1),
    ("model.weights.path", OPTIONAL_STR, False, 1),
    ("model.weights.sha256", OPTIONAL_STR, False, 1),
    ("model.weights.random_init", bool, False, 1),
    ("model.weights.random_seed", (int, type(None)), False, 1),
    ("model.num_split_points", int, False, 1),
    ("input", dict, True, 1),
) + tuple(("input." + n, t, r, 1) for n, t, r in TENSOR) + (
    ("input.preprocess", (dict, type(None)), False, 1),
    ("output", dict, True, 1),
) + tuple(("output." + n, t, r, 1) for n, t, r in TENSOR) + (
    ("output.tensors", list, False, 2),
    ("output.postprocess", dict, False, 2),  # {"kind": "detections", ...}: what the tail's outputs are (below)
    ("verification", dict, False, 1),
    ("toolchain", dict, False, 1),
)
FIELDS = {
    KIND_SPLIT: _COMMON + (
        ("split", dict, True, 1),
        ("split.index", int, True, 1),
        ("split.name", str, False, 1),
        ("split.node", str, False, 1),
        ("split.first", bool, False, 1),
        ("split.last", bool, False, 1),
        ("split.head_params", int, False, 1),
        ("split.head_flops", NUMBER, False, 1),
        ("split.total_flops", NUMBER, False, 1),
        ("split.cut", str, False, 2),  # "K.J": a cut where several tensors cross (``index`` is then K)
        ("boundary", dict, True, 1),
    ) + tuple(("boundary." + n, t, r, 1) for n, t, r in TENSOR) + (
        ("boundary.tensors", list, False, 2),
        ("parts", dict, True, 1),  # head / tail -> {"files": {format: file entry}, ...} or null
    ),
    KIND_SEGMENTS: _COMMON + (
        ("points", list, True, 1),
        ("segments", list, True, 1),  # {"index", "from", "to", "name", "input", "output", "params", "files"}
        ("cuts", list, False, 2),  # the cuts of several tensors the planner may choose: {"index": "K.J", "after", ...}
    ),
}
_MISSING = object()


def check(data, where):
    """Check ``data`` against its kind's fields: present where required, of the right type; return the kind."""
    if not isinstance(data, dict):
        raise ManifestError("{} is not a JSON object; re-export the bundle".format(where))
    kind = data.get("kind", KIND_SPLIT)
    if kind not in FIELDS:
        raise ManifestError("{}: unknown bundle kind {!r}".format(where, kind))
    missing = [name for name, _, required, _ in FIELDS[kind] if required and "." not in name and name not in data]
    if missing:
        raise ManifestError("{} lacks {}; re-export the bundle".format(where, ", ".join(missing)))
    version = data["schema_version"]
    if version not in READABLE:
        raise ManifestError("{} has schema version {}, this runtime reads versions {}; re-export with this version "
                            "of the tool".format(where, version, " and ".join(map(str, READABLE))))
    for name, types, required, since in FIELDS[kind]:
        if since > version:
            if _get(data, name) is not _MISSING:
                raise ManifestError("{}: {} needs schema version {}, the manifest says {}; re-export the bundle".format(
                    where, name, since, version))
            continue
        if required and _several(data, name):
            continue  # a spec of several tensors says shape and dtype per tensor
        _check_field(data, name, types, required, where)
    for key in ("boundary", "output"):
        spec = data.get(key)
        for i, entry in enumerate(spec["tensors"] if isinstance(spec, dict) and "tensors" in spec else ()):
            _check_tensor_list_entry(entry, "{}.tensors[{}]".format(key, i), where)
    return kind


def _check_field(data, name, types, required, where, shown=None):
    """Field ``name`` of ``data`` present if required and of its type; named ``shown`` (default ``name``)."""
    value = _get(data, name)
    if value is _MISSING:
        if required:
            raise ManifestError("{}: {} is required; re-export the bundle".format(where, shown or name))
        return
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
        raise ManifestError("{}: {} must be {}, not {!r}; re-export the bundle".format(
            where, shown or name, " or ".join(t.__name__ for t in _tuple(types)), value))


def _several(data, dotted):
    """Whether the spec holding field ``dotted`` (``boundary.shape``) lists several tensors."""
    parent = _get(data, dotted.rsplit(".", 1)[0]) if "." in dotted else _MISSING
    return isinstance(parent, dict) and "tensors" in parent


def _check_tensor_list_entry(spec, name, where):
    if not isinstance(spec, dict):
        raise ManifestError("{}: {} must be a tensor spec; re-export the bundle".format(where, name))
    for field, types, required in TENSOR + (SOURCE,):
        _check_field(spec, field, types, required or field == "name", where, "{}.{}".format(name, field))


def tensors(spec):
    """The tensor specs of a boundary or output spec, in order: itself alone, or the ``tensors`` it lists."""
    return spec["tensors"] if "tensors" in spec else [spec]


def parse_split(value):
    """A split as the wire and the command line give it, normalised: an int (``20``), or ``"K.J"`` for a cut where
    several tensors cross; ValueError for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("not a split: {!r}".format(value))
    point, dot, number = str(value).strip().partition(".")
    if not point.isdigit() or (dot and not number.isdigit()):
        raise ValueError("not a split: {!r}".format(value))
    return "{}.{}".format(int(point), int(number)) if dot else int(point)


def is_cut(value):
    """Whether ``value`` is a ``"K.J"`` cut of several tensors (not a point's index or name)."""
    try:
        return isinstance(parse_split(value), str)
    except ValueError:
        return False


def resolve_split(value, points, cuts=None):
    """The split a ``--split`` value names, as ``parse_split`` gives it (an int, or ``"K.J"``): a point's index, a
    cut's id, or a point's name, its graph node, or any module whose call ends there (``ends``: ``conv1.2``, the
    ReLU that ends ``conv1``).  ``points``: every point's spec in index order (``index``, ``name``, ``node``,
    ``ends``), as a segments manifest's ``points`` and ``cli.py layers --json`` list them; ``cuts``: the ids of the
    cuts of several tensors there are (None: not known, so any ``"K.J"`` after a valid point passes).  The one rule
    for ``export``, ``run-edge`` and ``sweep``; anything else is a one-line UserError listing the valid points."""
    text = str(value).strip()
    try:
        split = parse_split(text)
    except ValueError:
        split = None
    if split is not None and int(str(split).split(".")[0]) >= len(points):
        raise UserError("split {} is out of range; valid split points are 0..{} (see `cli.py layers`)".format(
            split, len(points) - 1))
    if isinstance(split, int) or (split is not None and (cuts is None or split in cuts)):
        return split
    found = find_point(text, points)
    if found is not None:
        return found
    raise UserError("{!r} is not a valid split point (inside a block, or more than one tensor crosses there); "
                    "valid: {} (and the cuts of several tensors that `cli.py layers --max-tensors K` lists)".format(
                        text, ", ".join("{}={}".format(p["index"], p["name"]) for p in points)))


def find_point(name, points):
    """The index of the point among ``points`` (specs) that ``name`` names: its name, its graph node, or a module
    whose call ends there; None where none is."""
    text = str(name).strip()
    for p in points:
        if text in (p.get("name"), p.get("node")) + tuple(p.get("ends") or ()):
            return p["index"]
    return None


LOCAL = "local"  # the whole model on the edge, nothing on the request path: a split the planner and sweep consider


def split_order(split):
    """A sort key that puts ``"K.J"`` cuts after point K, in order, and ``"local"`` after every point."""
    if split == LOCAL:
        return float("inf"), 0
    point, _, number = str(split).partition(".")
    return int(point), int(number or 0)


def split_id(data):
    """What names a split bundle's cut: the point's index (an int), or ``"K.J"`` for a cut of several tensors."""
    return data["split"].get("cut", data["split"]["index"])


def _tuple(types):
    return types if isinstance(types, tuple) else (types,)


def _get(data, dotted):
    value = data
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


# ---------------------------------------------------------------- model ids

def model_id(spec):
    """The model id (``model.id``) that a ``--model`` value names: the one rule for both sides.

    ``resnet50`` -> ``resnet50``, ``torchvision:NAME`` -> ``torchvision-NAME``, ``package.module:function`` ->
    ``package-module-function``; a value without ``:`` already is an id (``torchvision-NAME``) and stays as it is.
    The exporter names its bundles by it (``model.source`` keeps the spec), and the edge's commands take either.
    """
    if ":" not in spec:
        return spec
    return spec.replace(":", "-").replace(".", "-")


# ---------------------------------------------------------------- builders (the exporter's only way to write)

_ITEM_BYTES = {"float32": 4, "float16": 2, "float64": 8, "int64": 8, "int32": 4, "uint8": 1, "int8": 1, "bool": 1}


def tensor_spec(name, shape, dtype="float32", source=None):
    """A tensor's spec: ``shape`` is one sample's (the batch dimension is written as None)."""
    numel = 1
    for d in shape:
        numel *= d
    spec = {"name": name, "shape": [None] + list(shape), "dtype": dtype, "bytes_per_sample": numel * _ITEM_BYTES[dtype]}
    if source is not None:
        spec["source"] = source
    return spec


def tensors_spec(name, specs):
    """The spec of several tensors crossing together (schema 2), or of the one tensor in ``specs``."""
    if len(specs) == 1:
        return specs[0]
    return {"name": name, "tensors": list(specs), "bytes_per_sample": sum(s["bytes_per_sample"] for s in specs)}


def detections_spec(name, specs, by, score_thresh, nms_thresh, detections_per_img):
    """The output spec of a tail that ends with a detector's post-processing (schema 2): its ``boxes``, ``scores``
    and ``labels`` tensors, and what made them."""
    spec = tensors_spec(name, specs)
    spec["postprocess"] = {"kind": DETECTIONS, "by": by, "score_thresh": float(score_thresh),
                           "nms_thresh": float(nms_thresh), "detections_per_img": int(detections_per_img)}
    return spec


def model_spec(model_id, source, notes, weights_path, weights_sha256, random_init, random_seed, num_split_points):
    return {"id": model_id, "source": source, "notes": notes,
            "weights": {"path": weights_path, "sha256": weights_sha256, "random_init": bool(random_init),
                        "random_seed": random_seed if random_init else None},
            "num_split_points": num_split_points}


def bundle_id(model_id, weights_sha256, split_index, file_hashes):
    """A short id naming what a bundle computes: the same model, weights, split and files give the same id.

    Edge and cloud compare it in the handshake, so a head is never paired with a
    tail cut from other weights or at another split.
    """
    digest = hashlib.sha256()
    for part in [model_id, weights_sha256 or "random-init", str(split_index)] + sorted(file_hashes):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def split_manifest(model, split, input_spec, boundary, output, parts, created, toolchain):
    """The manifest of a split bundle; ``parts`` maps head / tail to their entry (or None)."""
    hashes = [f["sha256"] for p in parts.values() if p for f in p["files"].values()]
    several = "cut" in split or "tensors" in boundary or "tensors" in output
    return {
        "schema_version": 2 if several else 1,
        "bundle_id": bundle_id(model["id"], model["weights"]["sha256"], split_id({"split": split}), hashes),
        "created": created,
        "model": model,
        "split": split,
        "input": input_spec,
        "boundary": boundary,
        "output": output,
        "parts": parts,
        "toolchain": toolchain,
    }


def segments_manifest(model, input_spec, output, points, segments, created, toolchain, cuts=()):
    """The manifest of a segments bundle: the model cut at every point, one segment between each pair; with
    ``cuts`` (schema 2) also the cuts of several tensors between them (``export --segments --max-tensors K``)."""
    hashes = [f["sha256"] for seg in segments for f in seg["files"].values()]
    extra = {"cuts": list(cuts)} if cuts else {}
    return dict({
        "schema_version": 2 if cuts or "tensors" in output else 1, "kind": KIND_SEGMENTS,
        "bundle_id": bundle_id(model["id"], model["weights"]["sha256"], KIND_SEGMENTS, hashes),
        "created": created,
        "model": model,
        "input": input_spec,
        "output": output,
        "points": points,
        "segments": segments,
        "toolchain": toolchain,
    }, **extra)
