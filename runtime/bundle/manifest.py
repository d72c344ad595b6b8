"""The contract between exporter and runtime: ``manifest.json`` of a bundle.

A bundle is a directory ``<model>-s<split>/`` holding ``manifest.json`` and the
compiled head and tail files it lists.  The exporter builds the manifest with
``schema``'s builders and writes it with :func:`write_manifest`; the edge and cloud
runtimes read it with :func:`load_manifest` (checked against ``schema.FIELDS``, then
the file names and the bundle id) and never import the exporter.  The fields are
described in docs/ARCHITECTURE.md ("The manifest").

Python 3.6 syntax: this module runs on the Jetson.
"""
import hashlib
import json
import os

from runtime.bundle import schema
from runtime.bundle.schema import KIND_SEGMENTS, KIND_SPLIT, SCHEMA_VERSION, bundle_id  # noqa: F401 (re-exported)
from runtime.errors import ManifestError

MANIFEST_NAME = "manifest.json"
FORMATS = ("onnx", "torchscript")
PARTS = ("head", "tail")
# File name of each part in each format, inside the bundle directory.
FILE_NAMES = {
    ("head", "onnx"): "head.onnx",
    ("tail", "onnx"): "tail.onnx",
    ("head", "torchscript"): "head.pt",
    ("tail", "torchscript"): "tail.pt",
}
# A "segments" bundle holds the model cut at every point, segment by segment, for profiling.
SEGMENTS_DIR_SUFFIX = "-segments"


def segment_file_name(index, fmt):
    return "seg{:03d}.{}".format(index, "onnx" if fmt == "onnx" else "pt")


def iter_file_entries(data):
    """(part, format, file entry) of every file a manifest lists; segment files have part 'segments'."""
    if data.get("kind", KIND_SPLIT) == KIND_SEGMENTS:
        for seg in data["segments"]:
            for fmt in sorted(seg["files"]):
                yield "segments", fmt, seg["files"][fmt]
        return
    for part in PARTS:
        entry = data["parts"].get(part)
        if entry:
            for fmt in sorted(entry["files"]):
                yield part, fmt, entry["files"][fmt]


def sha256_file(path, chunk_size=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path, **extra):
    """Describe one artifact file: its name, size and sha256, plus format-specific keys."""
    entry = {"file": os.path.basename(path), "bytes": os.path.getsize(path), "sha256": sha256_file(path)}
    entry.update(extra)
    return entry


def bundle_dir_name(model_id, split_index):
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)
    return "{}-s{}".format(safe, split_index)


def segments_dir_name(model_id):
    return bundle_dir_name(model_id, 0).rsplit("-s0", 1)[0] + SEGMENTS_DIR_SUFFIX


def directory_name(data):
    """The directory a bundle lives in: ``<model>-s<split>``, or ``<model>-segments``."""
    if data.get("kind", KIND_SPLIT) == KIND_SEGMENTS:
        return segments_dir_name(data["model"]["id"])
    return bundle_dir_name(data["model"]["id"], schema.split_id(data))


def write_manifest(directory, manifest):
    path = os.path.join(directory, MANIFEST_NAME)
    with open(path, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=False)
        f.write("\n")
    return path


class Manifest(object):
    """A validated manifest, with helpers to find and check its files."""

    def __init__(self, directory, data):
        self.directory = directory
        self.data = data

    def __getitem__(self, key):
        return self.data[key]

    @property
    def bundle_id(self):
        return self.data["bundle_id"]

    @property
    def kind(self):
        return self.data.get("kind", KIND_SPLIT)

    @property
    def model_id(self):
        return self.data["model"]["id"]

    @property
    def split_index(self):
        """The split: a point's index (an int), or ``"K.J"`` for a cut where several tensors cross."""
        return schema.split_id(self.data) if self.kind == KIND_SPLIT else None

    @property
    def label(self):
        """How logs and messages name the bundle: ``<model>-s<split>``, or ``<model>-segments`` (no split)."""
        if self.kind == KIND_SEGMENTS:
            return self.model_id + SEGMENTS_DIR_SUFFIX
        return "{}-s{}".format(self.model_id, self.split_index)

    @property
    def boundaries(self):
        """The specs of the tensors that cross the cut, in order (one, but for a ``"K.J"`` cut)."""
        return schema.tensors(self.data["boundary"])

    @property
    def outputs(self):
        """The specs of the model's outputs, in order."""
        return schema.tensors(self.data["output"])

    def part(self, name):
        """The entry of ``head`` or ``tail``, or None when the split puts everything on the other side."""
        return self.data["parts"].get(name) if self.kind == KIND_SPLIT else None

    def file_path(self, part, fmt):
        entry = self.part(part)
        if entry is None:
            raise ManifestError("bundle {} has no {} (split {} puts the whole model on the other side)".format(
                self.directory, part, self.split_index))
        if fmt not in entry["files"]:
            raise ManifestError("bundle {} has no {} {} file; it holds {}; re-export with --formats {}".format(
                self.directory, part, fmt, ", ".join(sorted(entry["files"])) or "none", fmt))
        return os.path.join(self.directory, entry["files"][fmt]["file"])

    def iter_files(self):
        return iter_file_entries(self.data)

    def verify_files(self, parts=PARTS, formats=FORMATS):
        """Check every listed file of the given parts and formats against its size and sha256; raise on the first
        mismatch."""
        damage = self.damage(parts, formats)
        if damage:
            raise ManifestError("bundle {}: {}; re-export or re-push the bundle".format(self.directory, damage))

    def damage(self, parts=PARTS + ("segments",), formats=FORMATS):
        """What is wrong with the first listed file of the given parts and formats that does not match the manifest
        (missing, another size, another sha256), or None when they all match."""
        for part, fmt, entry in self.iter_files():
            if part not in parts or fmt not in formats:
                continue
            path = os.path.join(self.directory, entry["file"])
            if not os.path.isfile(path):
                return "{} is missing".format(entry["file"])
            size = os.path.getsize(path)
            if size != entry["bytes"]:
                return "{} is corrupt: {} bytes but the manifest says {}".format(entry["file"], size, entry["bytes"])
            actual = sha256_file(path)
            if actual != entry["sha256"]:
                return "{} is corrupt: sha256 {} but the manifest says {}".format(entry["file"], actual, entry["sha256"])
        return None


def load_manifest(directory):
    """Read and validate ``directory/manifest.json``; raise ManifestError naming what is wrong."""
    path = os.path.join(directory, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise ManifestError("no bundle at {}: {} not found; run `cli.py export` first".format(directory, MANIFEST_NAME))
    try:
        with open(path) as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError("{} is not valid JSON ({}); re-export the bundle".format(path, exc))
    return Manifest(directory, validate(data, path))


def validate(data, where):
    """Check a manifest (from a file or from the network) against the schema, its file names and its bundle id;
    return it or raise ManifestError naming what is wrong."""
    if schema.check(data, where) == KIND_SEGMENTS:
        return _validate_segments(data, where)
    model_id, split = data["model"]["id"], schema.split_id(data)
    if bundle_dir_name(model_id, split) != "{}-s{}".format(model_id, split):
        raise ManifestError("{}: model id {!r} must be letters, digits, '-', '_' or '.'".format(where, model_id))
    if "cut" in data["split"]:
        point, _, number = split.partition(".")
        if point != str(data["split"]["index"]) or not number.isdigit():
            raise ManifestError("{}: split.cut {!r} must be \"{}.J\" (a cut after point {}); re-export the "
                                "bundle".format(where, split, data["split"]["index"], data["split"]["index"]))
    parts = data["parts"]
    if not isinstance(parts, dict) or set(parts) - set(PARTS):
        raise ManifestError("{}: 'parts' must map head/tail to their files".format(where))
    for part in PARTS:
        entry = parts.get(part)
        if entry is None:
            continue
        files = entry.get("files") if isinstance(entry, dict) else None
        if not isinstance(files, dict) or set(files) - set(FORMATS):
            raise ManifestError("{}: {} must list its files by format ({})".format(where, part, ", ".join(FORMATS)))
        for fmt, fentry in files.items():
            for key in ("file", "sha256", "bytes"):
                if not isinstance(fentry, dict) or key not in fentry:
                    raise ManifestError("{}: {} {} entry lacks '{}'; re-export the bundle".format(where, part, fmt, key))
            if fentry["file"] != FILE_NAMES[(part, fmt)]:
                raise ManifestError("{}: {} {} file must be named {}, not {!r}".format(
                    where, part, fmt, FILE_NAMES[(part, fmt)], fentry["file"]))
    if data["bundle_id"] != expected_bundle_id(data):
        raise ManifestError("{}: bundle id {} does not match its contents ({}); the manifest was edited".format(
            where, data["bundle_id"], expected_bundle_id(data)))
    return data


def _validate_segments(data, where):
    points, segments = data["points"], data["segments"]
    if not isinstance(points, list) or not isinstance(segments, list) or len(segments) != len(points) - 1:
        raise ManifestError("{}: a segments bundle has one segment between each pair of points".format(where))
    for i, seg in enumerate(segments):
        files = seg.get("files") if isinstance(seg, dict) else None
        if seg.get("index") != i or not isinstance(files, dict) or set(files) - set(FORMATS):
            raise ManifestError("{}: segment {} is malformed".format(where, i))
        for fmt, fentry in files.items():
            if not isinstance(fentry, dict) or fentry.get("file") != segment_file_name(i, fmt) or \
                    "sha256" not in fentry or "bytes" not in fentry:
                raise ManifestError("{}: segment {} {} file entry is malformed".format(where, i, fmt))
    if data["bundle_id"] != expected_bundle_id(data):
        raise ManifestError("{}: bundle id {} does not match its contents; the manifest was edited".format(
            where, data["bundle_id"]))
    return data


def expected_bundle_id(data):
    hashes = [f["sha256"] for _, _, f in iter_file_entries(data)]
    split = schema.split_id(data) if data.get("kind", KIND_SPLIT) == KIND_SPLIT else KIND_SEGMENTS
    return bundle_id(data["model"]["id"], data["model"].get("weights", {}).get("sha256"), split, hashes)
