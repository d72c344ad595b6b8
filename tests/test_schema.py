"""The manifest schema (runtime/bundle/schema.py): builders and checks from one table; no torch, no files."""
import copy

import pytest

from runtime.bundle import schema
from runtime.bundle.manifest import FILE_NAMES, validate
from runtime.errors import ManifestError


def split_manifest():
    files = {fmt: {"file": FILE_NAMES[(part, fmt)], "bytes": 10, "sha256": "{:064x}".format(i), "format": fmt}
             for i, (part, fmt) in enumerate([("head", "onnx")])}
    model = schema.model_spec("tiny", "tests", "", None, None, True, 0, 4)
    split = {"index": 2, "name": "layer2", "node": "layer2", "first": False, "last": False, "head_params": 5,
             "head_flops": 7, "total_flops": 9}
    return schema.split_manifest(model, split, schema.tensor_spec("input", (3, 8, 8)),
                                 schema.tensor_spec("boundary", (16, 2, 2)), schema.tensor_spec("output", (10,)),
                                 {"head": {"files": files, "params": 5}, "tail": None}, "2026-12-01T00:00:00+00:00",
                                 {"torch": "x"})


def segments_manifest():
    model = schema.model_spec("tiny", "tests", "", "w.pth", "ab" * 32, False, 0, 3)
    segments = [{"index": i, "from": i, "to": i + 1, "name": str(i), "files": {"onnx": {
        "file": "seg{:03d}.onnx".format(i), "bytes": 1, "sha256": "{:064x}".format(i)}}} for i in range(2)]
    return schema.segments_manifest(model, schema.tensor_spec("input", (3, 8, 8)), schema.tensor_spec("output", (10,)),
                                    [{"index": i} for i in range(3)], segments, "2026-12-01T00:00:00+00:00", {})


def dotted_keys(data, prefix=""):
    for key, value in data.items():
        yield prefix + key
        if isinstance(value, dict) and key not in ("parts", "verification", "toolchain", "preprocess"):
            yield from dotted_keys(value, prefix + key + ".")


@pytest.mark.parametrize("build,kind", [(split_manifest, schema.KIND_SPLIT), (segments_manifest, schema.KIND_SEGMENTS)])
def test_what_the_builders_write_is_what_the_table_lists_and_validates(build, kind):
    data = build()
    assert validate(data, "built") is data
    listed = {name for name, _, _, _ in schema.FIELDS[kind]}
    assert set(dotted_keys(data)) - listed == set(), "a builder writes a field the schema does not list"


def test_the_bundle_id_names_model_weights_split_and_files():
    a, b = split_manifest(), split_manifest()
    assert a["bundle_id"] == b["bundle_id"]
    b["parts"]["head"]["files"]["onnx"]["sha256"] = "f" * 64
    with pytest.raises(ManifestError, match="does not match its contents"):
        validate(b, "edited")


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.pop("boundary"), "lacks boundary"),
    (lambda d: d["split"].pop("index"), "split.index is required"),
    (lambda d: d["split"].update(index="2"), "split.index must be int"),
    (lambda d: d["split"].update(index=True), "split.index must be int"),
    (lambda d: d["boundary"].update(shape="16,2,2"), "boundary.shape must be list"),
    (lambda d: d["model"]["weights"].update(random_init="yes"), "model.weights.random_init must be bool"),
    (lambda d: d.update(schema_version=2), "schema version 2, this runtime reads version 1"),
    (lambda d: d.update(kind="ensemble"), "unknown bundle kind 'ensemble'"),
])
def test_a_bad_field_is_named_in_one_line(edit, message):
    data = copy.deepcopy(split_manifest())
    edit(data)
    with pytest.raises(ManifestError, match=message) as refused:
        validate(data, "m.json")
    assert "\n" not in str(refused.value) and str(refused.value).startswith("m.json")


def test_a_field_added_by_a_newer_writer_is_accepted():
    """Evolution rule: readers accept manifests with fields they do not know."""
    data = split_manifest()
    data["model"]["license"] = "MIT"
    data["energy"] = {"joules_per_sample": 0.1}
    assert validate(data, "newer") is data


def test_every_field_says_since_when_and_the_version_is_one():
    assert schema.SCHEMA_VERSION == 1
    for kind, fields in schema.FIELDS.items():
        names = [name for name, _, _, _ in fields]
        assert len(names) == len(set(names)), kind
        for name, _, _, since in fields:
            assert 1 <= since <= schema.SCHEMA_VERSION, name
            parent = name.rpartition(".")[0]
            assert not parent or parent in names, "{} listed without its parent {}".format(name, parent)
