#!/usr/bin/env python3
"""Export verification at every split of a weights file: the largest absolute and relative error per split.

For trained (or BN-calibrated) weights, whose activations reach 10-25, this shows
how far each export's float32 noise sits below ``export``'s tolerance
(``atol + rtol * max|reference|``, exporter/verify.py)::

    python bench/verify_scale.py                                   # weights/proxy-resnet50.pth (bench/train_proxy.py)
    python bench/verify_scale.py --weights W.pth --mistakes --other-weights W2.pth

Every split is exported for real (``export_bundle``: ONNX and TorchScript, verified
on seeded batches of 1 and 4) into a temporary directory; the table gives per split
and format the max abs diff and the max relative diff (max abs diff / max |reference|)
of the boundary and of the output.  A split whose export fails verification is a
row saying so.  Without the weights file it prints why and exits 0.

``--mistakes`` measures in PyTorch, per split, the relative error that typical
mistakes cause, for comparison with the noise floor: the head of the previous split
(when its boundary has the same shape), the tail of ``--other-weights``, and the
first weight of the tail (and the last of the head) scaled by ``1 + --perturb``.
"""
import argparse
import copy
import os
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from exporter.bundle import export_bundle, prepare_model  # noqa: E402
from exporter.cutpoints import TracedModel  # noqa: E402
from exporter.errors import VerificationError  # noqa: E402
from exporter.models.configs import resolve  # noqa: E402
from exporter.options import ExportOptions  # noqa: E402
from exporter.verify import DEFAULT_ATOL, DEFAULT_RTOL  # noqa: E402

DEFAULT_WEIGHTS = os.path.join(REPO, "weights", "proxy-resnet50.pth")


def _worst(results, fmt, tensor):
    rows = [r for r in results if r["format"] == fmt and r["tensor"] == tensor]
    if not rows:
        return "-", "-"
    return ("{:.1e}".format(max(r["max_abs_diff"] for r in rows)),
            "{:.1e}".format(max(r["max_rel_diff"] or 0.0 for r in rows)))


def export_table(model, weights, splits, formats, out_dir):
    """Export each split; return markdown rows and the worst relative error seen per split."""
    rows, worst = [], {}
    for split in splits:
        start = time.time()
        try:
            _, manifest = export_bundle(model, str(split), ExportOptions(weights=weights, formats=formats, out_dir=out_dir))
        except VerificationError as exc:
            rows.append("| {} | all | FAILED: {} |".format(split, exc))
            continue
        ver = manifest["verification"]
        worst[split] = ver["max_rel_diff"]
        for fmt in formats:
            cells = _worst(ver["results"], fmt, "boundary") + _worst(ver["results"], fmt, "output")
            rows.append("| {} | {} | {} | {} | {} | {} | {} | {:.0f} s |".format(
                split, fmt, *cells, "yes" if ver["meaningful"] else "NO: " + ver["reason"], time.time() - start))
    return rows, worst


def _rel(actual, expected):
    if actual.shape != expected.shape:
        return None
    return float((actual - expected).abs().max() / expected.abs().max())


def _scaled_copy(module, which, factor):
    """A deep copy of ``module`` whose first (which=0) or last (which=-1) conv/linear weight is scaled by ``factor``."""
    clone = copy.deepcopy(module)
    param = [p for _, p in sorted(clone.named_parameters()) if p.dim() >= 2][which]
    with torch.no_grad():
        param.mul_(factor)
    return clone


def mistake_rows(model, weights, other, perturb, splits):
    """Per split, the relative error of each kind of mistake (None: caught by shape, '-': not applicable)."""
    config = resolve(model)
    net, _, _ = prepare_model(config, weights, False)
    traced = TracedModel(net, config.input_shape)
    other_traced = TracedModel(prepare_model(config, other, False)[0], config.input_shape) if other else None
    x = torch.randn((4,) + config.input_shape, generator=torch.Generator().manual_seed(0))
    rows = []
    with torch.no_grad():
        ref = net(x)
        for k in splits:
            head, tail = traced.head(k), traced.tail(k)
            boundary = head(x) if head is not None else x
            cells = []
            prev = traced.head(k - 1) if k > 1 else None
            cells.append(_rel(prev(x), boundary) if prev is not None else "-")
            cells.append(_rel(other_traced.tail(k)(boundary), ref) if other_traced and tail is not None else "-")
            cells.append(_rel(_scaled_copy(head, -1, 1 + perturb)(x), boundary) if head is not None else "-")
            cells.append(_rel(_scaled_copy(tail, 0, 1 + perturb)(boundary), ref) if tail is not None else "-")
            rows.append("| {} | {} |".format(k, " | ".join(
                "shape" if c is None else c if isinstance(c, str) else "{:.1e}".format(c) for c in cells)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS)
    parser.add_argument("--splits", default=None, help="comma-separated split indices (default: all)")
    parser.add_argument("--formats", default="onnx,torchscript")
    parser.add_argument("--mistakes", action="store_true", help="also measure the relative error of mistakes")
    parser.add_argument("--other-weights", default=None, help="a second weights file, for a tail from other weights")
    parser.add_argument("--no-export", action="store_true", help="with --mistakes: only measure the mistakes")
    parser.add_argument("--perturb", type=float, default=0.01, help="relative change of one layer's weights")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.weights):
        print("skipped: no weights file {} (train one with bench/train_proxy.py, or pass --weights)".format(
            args.weights))
        return 0
    n = len(TracedModel(resolve(args.model).build(), resolve(args.model).input_shape).points)
    splits = [int(s) for s in args.splits.split(",")] if args.splits else list(range(n))
    formats = [f for f in args.formats.split(",") if f]
    print("{} {}: atol {} + rtol {} x max|ref|".format(args.model, args.weights, DEFAULT_ATOL, DEFAULT_RTOL))
    rows, worst = [], {}
    if not args.no_export:
        with tempfile.TemporaryDirectory() as out_dir:
            rows, worst = export_table(args.model, args.weights, splits, formats, out_dir)
    print("| split | format | boundary max abs | boundary max rel | output max abs | output max rel | meaningful | time |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("largest relative error per split: " + ", ".join("{}: {:.1e}".format(k, v) for k, v in worst.items()))
    if worst:
        print("noise floor (largest over all splits): {:.1e}; tolerance {:.0e} is {:.0f}x above it".format(
            max(worst.values()), DEFAULT_RTOL, DEFAULT_RTOL / max(max(worst.values()), 1e-12)))
    if args.mistakes:
        print("\nrelative error of mistakes (PyTorch, batch 4; 'shape': caught by the shape check)")
        print("| split | head of split k-1 | tail of --other-weights | head's last weight x{0} | tail's first "
              "weight x{0} |".format(1 + args.perturb))
        print("|---|---|---|---|---|")
        print("\n".join(mistake_rows(args.model, args.weights, args.other_weights, args.perturb, splits)))
    return 0 if args.no_export or len(worst) == len(splits) else 1


if __name__ == "__main__":
    sys.exit(main())
