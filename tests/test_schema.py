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
    (lambda d: d.update(schema_version=3), "schema version 3, this runtime reads versions 1 and 2"),
    (lambda d: d["split"].update(cut="2.1"), "split.cut needs schema version 2, the manifest says 1"),
    (lambda d: d["boundary"].update(tensors=[]), "boundary.tensors needs schema version 2"),
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


def several_manifest(**edits):
    """A bundle cut where two tensors cross (schema 2): ``boundary.tensors`` and ``split.cut``."""
    data = split_manifest()
    data["split"]["cut"] = "2.1"
    data["boundary"] = schema.tensors_spec("boundary", [
        schema.tensor_spec("boundary_0", (16, 2, 2), source="layer1"),
        schema.tensor_spec("boundary_1", (8, 2, 2), "float16", source="layer2.conv1")])
    for key, value in edits.items():
        data[key] = value
    return schema.split_manifest(data["model"], data["split"], data["input"], data["boundary"], data["output"],
                                 data["parts"], data["created"], data["toolchain"])


def test_a_cut_of_several_tensors_is_written_as_version_2_and_only_it():
    assert split_manifest()["schema_version"] == 1, "a single-tensor bundle stays readable by version-1 runtimes"
    data = several_manifest()
    assert data["schema_version"] == 2 and validate(data, "built") is data
    assert data["boundary"]["bytes_per_sample"] == 16 * 4 * 4 + 8 * 4 * 2
    assert [t["name"] for t in schema.tensors(data["boundary"])] == ["boundary_0", "boundary_1"]
    assert schema.tensors(data["output"]) == [data["output"]]
    assert schema.split_id(data) == "2.1" and schema.split_id(split_manifest()) == 2
    assert data["bundle_id"] != split_manifest()["bundle_id"], "the cut is part of what the id names"


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["boundary"]["tensors"][1].pop("shape"), r"boundary.tensors\[1\].shape is required"),
    (lambda d: d["boundary"]["tensors"][0].pop("name"), r"boundary.tensors\[0\].name is required"),
    (lambda d: d["boundary"]["tensors"].__setitem__(0, "boundary_0"), r"boundary.tensors\[0\] must be a tensor"),
    (lambda d: d["boundary"].update(tensors="boundary_0"), "boundary.tensors must be list"),
    (lambda d: d["split"].update(cut="3.1"), r"split.cut '3.1' must be \"2.J\""),
    (lambda d: d["split"].update(cut="2.x"), r"split.cut '2.x' must be"),
])
def test_a_bad_cut_of_several_tensors_is_named_in_one_line(edit, message):
    data = copy.deepcopy(several_manifest())
    edit(data)
    with pytest.raises(ManifestError, match=message) as refused:
        validate(data, "m.json")
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("text,split", [("20", 20), (" 4 ", 4), ("4.1", "4.1"), ("04.010", "4.10"), (7, 7)])
def test_a_split_is_a_point_or_a_cut_of_several_tensors(text, split):
    assert schema.parse_split(text) == split
    assert sorted(["4.10", 5, "4.2", 4], key=schema.split_order) == [4, "4.2", "4.10", 5]


@pytest.mark.parametrize("text", ["-1", "auto", "4.", ".1", "4.1.2", True, 4.5, None])
def test_anything_else_is_not_a_split(text):
    with pytest.raises(ValueError):
        schema.parse_split(text)


def test_every_field_says_since_when_and_the_newest_version_is_two():
    assert schema.SCHEMA_VERSION == 2 and schema.READABLE == (1, 2)
    for kind, fields in schema.FIELDS.items():
        names = [name for name, _, _, _ in fields]
        assert len(names) == len(set(names)), kind
        for name, _, _, since in fields:
            assert 1 <= since <= schema.SCHEMA_VERSION, name
            parent = name.rpartition(".")[0]
            assert not parent or parent in names, "{} listed without its parent {}".format(name, parent)
