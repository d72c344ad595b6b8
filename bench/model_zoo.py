#!/usr/bin/env python3
"""Which models split, where, and how exactly: a table over torchvision's families and the seed's ResNet-50.

For each model (``--models``) it runs, as a user would, ``cli.py layers --model M --max-tensors 3 --json`` (the
single-tensor points and the cuts where 2 or 3 tensors cross) and ``cli.py export`` at ``--exports`` single-tensor
points spread over the model, with weights of a trained network's activation scale: torchvision's random init with
every BatchNorm's statistics set to those of its input on a calibration batch and the classifier's logits spread
(``tests/fixtures/calibrated.py``), so that verification compares at a realistic scale, not near zero.  The seed's
ResNet-50 uses its embedded weights if present (``weights/``), else random init.  Prints a Markdown table (what
stops a model that does not trace is its row) and writes ``model_zoo.json`` and ``.md`` into ``--out``::

    python bench/model_zoo.py                                  # the default list, 2 exports each (about 20 min)
    python bench/model_zoo.py --models torchvision:vit_b_16 --exports 3

The figures are the export's own verification (head then tail in onnxruntime and TorchScript against the unsplit
model, on random inputs at batch sizes 1 and 3): the largest difference relative to the largest output value.
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
                  "torchvision:ssdlite320_mobilenet_v3_large,torchvision:retinanet_resnet50_fpn")


def _say(message):
    sys.stderr.write("model-zoo: {}\n".format(message))
    sys.stderr.flush()


def cli(*args, timeout=3600):
    """``cli.py ARGS``: (exit code, stdout, the last line of stderr)."""
    proc = subprocess.run([sys.executable, CLI] + [str(a) for a in args], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    return proc.returncode, proc.stdout, lines[-1] if lines else ""


def calibrated_weights(model, shape, path):
    """A state_dict of a trained network's activation scale for torchvision ``model``, saved at ``path``."""
    import torch
    sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))
    from calibrated import calibrated_state
    torch.save(calibrated_state(model.split(":", 1)[1], shape, seed=3), path)
    return path


def spread(points, n):
    """``n`` single-tensor points inside the model (not 0 or the last), evenly spread."""
    inner = [p["index"] for p in points if isinstance(p["index"], int)][1:-1]
    if not inner or n <= 0:
        return []
    step = len(inner) / float(n + 1)
    return sorted(set(inner[min(int(step * (i + 1)), len(inner) - 1)] for i in range(n)))


def study(model, exports, work):
    """One model's row: its points and cuts, and each export's verification."""
    row = {"model": model}
    t0 = time.time()
    code, out, err = cli("layers", "--model", model, "--max-tensors", 3, "--json")
    if code != 0:
        row["error"] = err
        return row
    data = json.loads(out)
    points = data["points"]
    shape = tuple(data["input_shape"])
    multi = [p for p in points if not isinstance(p["index"], int)]
    row.update(input_shape=list(shape), single=sum(1 for p in points if isinstance(p["index"], int)),
               two=sum(1 for p in multi if len(p["tensors"]) == 2), three=sum(1 for p in multi if len(p["tensors"]) == 3),
               layers_s=round(time.time() - t0, 1), exports=[])
    weights = []
    if model.startswith("torchvision:"):
        weights = ["--weights", calibrated_weights(model, shape, os.path.join(work, "weights.pth"))]
    elif not os.path.exists(os.path.join(REPO, "weights", "resnet50-best.pth")):
        weights = ["--random-init"]
    for split in spread(points, exports):
        t0 = time.time()
        name = next(p["name"] for p in points if p["index"] == split)
        code, out, err = cli("export", "--model", model, "--split", split, "--out", os.path.join(work, "out"),
                             *weights)
        entry = {"split": split, "name": name, "seconds": round(time.time() - t0, 1)}
        if code != 0:
            entry["error"] = err
        else:
            bundle = [d for d in os.listdir(os.path.join(work, "out")) if d.endswith("-s{}".format(split))][0]
            with open(os.path.join(work, "out", bundle, "manifest.json")) as f:
                manifest = json.load(f)
            results = manifest["verification"]["results"]
            entry["max_rel_diff"] = {fmt: max(r["max_rel_diff"] or 0.0 for r in results if r["format"] == fmt)
                                     for fmt in sorted(set(r["format"] for r in results))}
            entry["passed"] = all(r["passed"] for r in results)
            entry["meaningful"] = manifest["verification"].get("meaningful")
            entry["boundary"] = manifest["boundary"]["shape"][1:]
        row["exports"].append(entry)
        _say("{} split {} ({}): {}".format(model, split, name, entry.get("error") or "verified, max rel diff " +
                                           ", ".join("{} {:.1e}".format(k, v) for k, v in
                                                     entry["max_rel_diff"].items())))
    return row


def format_table(rows):
    lines = ["| model | input | points (1 tensor) | cuts of 2 / 3 tensors | exported at | verification max rel diff "
             "(onnx / TorchScript) |", "|---|---|---:|---:|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append("| {} | | – | – | – | {} |".format(r["model"], r["error"].replace("|", "/")))
            continue
        exported = "; ".join("{} `{}`".format(e["split"], e["name"]) for e in r["exports"]) or "–"
        checks = "; ".join(e.get("error", "").replace("|", "/") or "{:.1e} / {:.1e}{}".format(
            e["max_rel_diff"].get("onnx", 0.0), e["max_rel_diff"].get("torchscript", 0.0),
            "" if e.get("passed") else " (failed)") for e in r["exports"]) or "–"
        lines.append("| {} | {} | {} | {} / {} | {} | {} |".format(
            r["model"], "x".join(map(str, r["input_shape"])), r["single"], r["two"], r["three"], exported, checks))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated --model values")
    ap.add_argument("--exports", type=int, default=2, help="single-tensor points to export per model")
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
