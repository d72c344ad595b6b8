#!/usr/bin/env python3
"""Which models split, where, how exactly, and whether a split round-trips: a table over torchvision's families.

For each model (``--models``; ``NAME#MODULE`` narrows it to a submodule, ``--trace-module MODULE``, as a
detector's backbone) it runs, as a user would, ``cli.py layers --model M --max-tensors 3 --json`` (the
single-tensor points and the cuts where 2 or 3 tensors cross) and ``cli.py export`` at ``--exports`` single-tensor
points spread over the model, at one cut of several tensors (the middle one of those listed), and at split 0 (the
unsplit reference), with weights of a trained network's activation scale: torchvision's random init with every
BatchNorm's statistics set to those of its input on a calibration batch and the classifier's logits spread
(``tests/fixtures/calibrated.py``; a user model's batch norms likewise), so that verification compares at a
realistic scale, not near zero.  The seed's
ResNet-50 uses its embedded weights if present (``weights/``), else random init.  Then serve-cloud serves them and
``run-edge --dataset synthetic --limit 8`` runs each split: its predictions (classes, or a segmentation's pixel
accuracy per sample) against split 0's.  Prints a Markdown table (what stops a model that does not trace is its
row) and writes ``model_zoo.json`` and ``.md`` into ``--out``::

    python bench/model_zoo.py                                  # the default list (about 25 min on 2 cores)
    python bench/model_zoo.py --models torchvision:vit_b_16 --exports 3
    PYTHONPATH=bench python bench/model_zoo.py --models yolov8_features:yolov8n   # pip install ultralytics first

The verification figures are the export's own (head then tail in onnxruntime and TorchScript against the unsplit
model, on random inputs at batch sizes 1 and 4): the largest difference relative to the largest value, over
every tensor that crosses and every output.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLI = os.path.join(REPO, "cli.py")
DEFAULT_MODELS = ("resnet50,torchvision:resnet50,torchvision:vit_b_16,torchvision:swin_t,torchvision:convnext_tiny,"
                  "torchvision:mobilenet_v3_large,torchvision:deeplabv3_mobilenet_v3_large,"
                  "torchvision:lraspp_mobilenet_v3_large,torchvision:fcn_resnet50,"
                  "torchvision:ssdlite320_mobilenet_v3_large,torchvision:ssdlite320_mobilenet_v3_large#backbone,"
                  "torchvision:retinanet_resnet50_fpn#backbone")
ROUND_TRIP_SAMPLES = 8


def _say(message):
    sys.stderr.write("model-zoo: {}\n".format(message))
    sys.stderr.flush()


def cli(*args, timeout=3600):
    """``cli.py ARGS``: (exit code, stdout, the last line of stderr)."""
    proc = subprocess.run([sys.executable, CLI] + [str(a) for a in args], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    return proc.returncode, proc.stdout, lines[-1] if lines else ""


def calibrated_weights(model, module, shape, path):
    """A state_dict of a trained network's activation scale for torchvision ``model`` (its submodule ``module``,
    if given), saved at ``path``."""
    import torch
    sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))
    from calibrated import calibrated_state
    torch.save(calibrated_state(model.split(":", 1)[1], shape, seed=3, module=module or None), path)
    return path


def calibrated_user_weights(spec, shape, path):
    """A user model's (``package.module:function``) random init with its BatchNorms calibrated, saved at ``path``."""
    import importlib

    import torch
    sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))
    from calibrated import calibrate_bn, calibration_inputs
    module, _, function = spec.partition(":")
    torch.manual_seed(3)
    model = getattr(importlib.import_module(module), function)()
    calibrate_bn(model, calibration_inputs(8, shape, 3))
    torch.save(model.state_dict(), path)
    return path


def spread(points, n):
    """``n`` single-tensor points inside the model (not 0 or the last), evenly spread."""
    inner = [p["index"] for p in points if isinstance(p["index"], int)][1:-1]
    if not inner or n <= 0:
        return []
    step = len(inner) / float(n + 1)
    return sorted(set(inner[min(int(step * (i + 1)), len(inner) - 1)] for i in range(n)))


def middle_cut(points):
    """The middle one of the cuts of several tensors, or None."""
    multi = [p["index"] for p in points if not isinstance(p["index"], int)]
    return multi[len(multi) // 2] if multi else None


def study(model, exports, work):
    """One model's row: its points and cuts, each export's verification, and each split's round trip."""
    spec, _, module = model.partition("#")
    narrow = ["--trace-module", module] if module else []
    row = {"model": model}
    t0 = time.time()
    code, out, err = cli("layers", "--model", spec, *narrow, "--max-tensors", 3, "--json")
    if code != 0:
        row["error"] = err
        return row
    data = json.loads(out)
    points = data["points"]
    shape = tuple(data["input_shape"])
    multi = [p for p in points if not isinstance(p["index"], int)]
    row.update(model_id=data["model"], input_shape=list(shape),
               single=sum(1 for p in points if isinstance(p["index"], int)),
               two=sum(1 for p in multi if len(p["tensors"]) == 2), three=sum(1 for p in multi if len(p["tensors"]) == 3),
               outputs=len(points[-1].get("tensors") or [None]), layers_s=round(time.time() - t0, 1), exports=[])
    weights = []
    if spec.startswith("torchvision:"):
        weights = ["--weights", calibrated_weights(spec, module, shape, os.path.join(work, "weights.pth"))]
    elif ":" in spec:
        weights = ["--weights", calibrated_user_weights(spec, shape, os.path.join(work, "weights.pth"))]
    elif not os.path.exists(os.path.join(REPO, "weights", "resnet50-best.pth")):
        weights = ["--random-init"]
    store = os.path.join(work, "out")
    splits = spread(points, exports) + ([middle_cut(points)] if middle_cut(points) else [])
    for split in [0] + splits:
        entry = export(spec, narrow, weights, split, points, store)
        if split != 0 or "error" in entry:
            row["exports"].append(entry)
    good = [e["split"] for e in row["exports"] if "error" not in e]
    if good:
        for split, result in round_trips(store, data["model"], good).items():
            next(e for e in row["exports"] if e["split"] == split)["round_trip"] = result
    return row


def export(spec, narrow, weights, split, points, store):
    """``cli.py export`` at one split: its verification, as the manifest records it."""
    t0 = time.time()
    point = next(p for p in points if p["index"] == split)
    code, out, err = cli("export", "--model", spec, *narrow, "--split", split, "--out", store, *weights)
    entry = {"split": split, "name": point["name"], "tensors": len(point.get("tensors") or [None]),
             "seconds": round(time.time() - t0, 1)}
    if code != 0:
        entry["error"] = err
        return entry
    bundle = [d for d in os.listdir(store) if d.endswith("-s{}".format(split))][0]
    with open(os.path.join(store, bundle, "manifest.json")) as f:
        manifest = json.load(f)
    results = manifest["verification"]["results"]
    entry["max_rel_diff"] = {fmt: max(r["max_rel_diff"] or 0.0 for r in results if r["format"] == fmt)
                             for fmt in sorted(set(r["format"] for r in results))}
    entry["checked"] = sorted(set(r["tensor"] for r in results))
    entry["passed"] = all(r["passed"] for r in results)
    entry["meaningful"] = manifest["verification"].get("meaningful")
    _say("split {} ({}): {}".format(split, point["name"], "verified, max rel diff " + ", ".join(
        "{} {:.1e}".format(k, v) for k, v in entry["max_rel_diff"].items())))
    return entry


def round_trips(store, model_id, splits):
    """{split: "same as split 0" or what differed}: run-edge at each split against serve-cloud on ``store``."""
    sys.path.insert(0, REPO)
    from runtime import launch
    server = launch.serve_cloud("--port", 0, "--artifacts", store, cwd=REPO, log="discard")
    results = {}
    try:
        reference = _run_edge(server.address, model_id, 0, store)
        for split in splits:
            got = _run_edge(server.address, model_id, split, store)
            if isinstance(got, str) or isinstance(reference, str):
                results[split] = got if isinstance(got, str) else "split 0: " + reference
            else:
                worst = max(abs(a - b) for a, b in zip(got, reference))
                results[split] = "same as split 0" if worst <= 1e-3 else "differs from split 0 by {:.3g}".format(worst)
            _say("round trip at split {}: {}".format(split, results[split]))
    finally:
        server.stop()
    return results


def _run_edge(address, model_id, split, store):
    """Per-sample predictions of ``run-edge`` at ``split``, or its error."""
    with tempfile.TemporaryDirectory(prefix="model-zoo-edge-") as edge:
        report = os.path.join(edge, "r.json")
        code, _, err = cli("run-edge", "--cloud", address, "--model", model_id, "--split", split, "--cache",
                           os.path.join(edge, "cache"), "--dataset", "synthetic", "--limit", ROUND_TRIP_SAMPLES,
                           "--report", report)
        if code != 0:
            return err
        with open(report) as f:
            return [float(p) for p in json.load(f)["predictions"]]


def format_table(rows):
    lines = ["| model | input | points (1 tensor) | cuts of 2 / 3 tensors | outputs | exported at (tensors) | "
             "verification max rel diff (onnx / TorchScript) | round trip, {} samples |".format(ROUND_TRIP_SAMPLES),
             "|---|---|---:|---:|---:|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append("| {} | | – | – | – | – | {} | – |".format(r["model"], r["error"].replace("|", "/")))
            continue
        exported = "; ".join("{} `{}` ({})".format(e["split"], e["name"], e["tensors"]) for e in r["exports"]) or "–"
        checks = "; ".join(e.get("error", "").replace("|", "/") or "{:.1e} / {:.1e}{}".format(
            e["max_rel_diff"].get("onnx", 0.0), e["max_rel_diff"].get("torchscript", 0.0),
            "" if e.get("passed") else " (failed)") for e in r["exports"]) or "–"
        trips = "; ".join(e.get("round_trip", "–").replace("|", "/") for e in r["exports"]) or "–"
        lines.append("| {} | {} | {} | {} / {} | {} | {} | {} | {} |".format(
            r["model"], "x".join(map(str, r["input_shape"])), r["single"], r["two"], r["three"], r["outputs"],
            exported, checks, trips))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated --model values")
    ap.add_argument("--exports", type=int, default=2, help="single-tensor points to export per model (and one cut "
                    "of several tensors, and split 0)")
    ap.add_argument("--out", default="model_zoo", help="where the table and JSON go")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    os.makedirs(args.out, exist_ok=True)
    rows = []
    started = time.time()
    for i, model in enumerate(models):
        _say("[{}/{}] {}".format(i + 1, len(models), model))
        with tempfile.TemporaryDirectory(prefix="model-zoo-") as work:
            rows.append(study(model, args.exports, work))
    table = format_table(rows)
    print(table)
    with open(os.path.join(args.out, "model_zoo.json"), "w") as f:
        json.dump({"rows": rows, "seconds": round(time.time() - started, 1)}, f, indent=1)
    with open(os.path.join(args.out, "model_zoo.md"), "w") as f:
        f.write(table + "\n")
    _say("wrote {}/model_zoo.{{md,json}} in {:.0f} s".format(args.out, time.time() - started))


if __name__ == "__main__":
    main()
