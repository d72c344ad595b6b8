#!/usr/bin/env python3
"""edgesplit: cloud-edge split inference.  Each command parses its options and calls one function.

The exporter (torch, torchvision, onnx) is imported only inside the commands that
need it, so the edge commands run on a Jetson with numpy + onnxruntime alone.
Python 3.6 syntax: this file is on the edge path.
"""
import functools
import json
import sys

import click

from runtime.errors import UserError

FORMATS = ("onnx", "torchscript")


def _fail(message, code=1):
    click.echo("error: {}".format(message), err=True)
    sys.exit(code)


def handle_errors(fn):
    """One line and a non-zero exit for user errors; the traceback only under --debug."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug")
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            if debug:
                raise
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as exc:
            if debug:
                raise
            first = (str(exc).splitlines() or [""])[0][:300]
            _fail("unexpected {}: {} (rerun with --debug for the traceback)".format(type(exc).__name__, first))
    return wrapper


def _split_values(value, convert, example, param, count=None):
    """Click callback body: parse 'a,b,c' into a tuple, or raise BadParameter naming the option."""
    if value is None:
        return None
    try:
        values = tuple(convert(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("expected numbers separated by commas, e.g. {}".format(example), param=param)
    if count is not None and len(values) != count:
        raise click.BadParameter("expected {} values, e.g. {}".format(count, example), param=param)
    return values


def shape_option(ctx, param, value):
    shape = _split_values(value, int, "3,32,32", param, count=3)
    if shape is not None and any(v <= 0 for v in shape):
        raise click.BadParameter("dimensions must be positive, e.g. 3,32,32", param=param)
    return shape


def floats_option(ctx, param, value):
    return _split_values(value, float, "0.5,0.5,0.5", param)


def formats_option(ctx, param, value):
    formats = [f.strip() for f in value.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise click.BadParameter("unknown format {}; choose from {}".format(
            ", ".join(unknown) or "(none)", ",".join(FORMATS)), param=param)
    return formats


def positive_option(ctx, param, value):
    if value is not None and value < 0:
        raise click.BadParameter("must be >= 0", param=param)
    return value


MODEL_HELP = "resnet50 (the seed's CIFAR-100 ResNet-50), torchvision:NAME, or package.module:function"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(debug):
    """Cloud-edge split inference: export a model cut in two, serve its tail, run its head on the edge."""


@main.command()
@click.option("--model", default="resnet50", show_default=True, help=MODEL_HELP)
@click.option("--input-shape", default=None, callback=shape_option,
              help="C,H,W of one input (default: the model's own).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@handle_errors
def layers(model, input_shape, as_json):
    """List the valid split points of a model."""
    from exporter.bundle import describe_points
    from exporter.report import print_points
    config, points = describe_points(model, input_shape)
    if as_json:
        click.echo(json.dumps({"model": config.model_id, "input_shape": list(config.input_shape),
                               "points": points}, indent=2))
    else:
        print_points(config, points)


@main.command()
@click.option("--model", default="resnet50", show_default=True, help=MODEL_HELP)
@click.option("--split", required=True, help="Split point: an index from `layers`, or its name.")
@click.option("--weights", default=None, help="State-dict file (resnet50 default: weights/resnet50-best.pth).")
@click.option("--random-init", is_flag=True, help="Export untrained weights (chance-level accuracy).")
@click.option("--formats", default="onnx,torchscript", show_default=True, callback=formats_option,
              help="Comma-separated: onnx, torchscript.")
@click.option("--opset", default=15, show_default=True, type=int,
              help="ONNX opset; 15 loads in onnxruntime 1.10 on JetPack 4.6.")
@click.option("--input-shape", default=None, callback=shape_option,
              help="C,H,W of one input (default: the model's own).")
@click.option("--mean", default=None, callback=floats_option, help="Per-channel normalisation mean, e.g. 0.5,0.5,0.5.")
@click.option("--std", default=None, callback=floats_option, help="Per-channel normalisation std.")
@click.option("--out", default="artifacts", show_default=True, help="Directory that receives the bundle.")
@click.option("--atol", default=None, type=float, callback=positive_option,
              help="Verification absolute tolerance [default: 1e-4].")
@click.option("--rtol", default=None, type=float, callback=positive_option,
              help="Verification relative tolerance [default: 1e-3].")
@handle_errors
def export(model, split, weights, random_init, formats, opset, input_shape, mean, std, out, atol, rtol):
    """Cut a model at a split point and write a verified head/tail bundle."""
    from exporter.bundle import export_bundle
    from exporter.report import print_export
    from exporter.verify import DEFAULT_ATOL, DEFAULT_RTOL
    path, manifest = export_bundle(
        model, split, weights=weights, random_init=random_init, formats=formats, opset=opset,
        out_dir=out, input_shape=input_shape, mean=mean, std=std,
        atol=DEFAULT_ATOL if atol is None else atol, rtol=DEFAULT_RTOL if rtol is None else rtol)
    print_export(path, manifest)


BACKEND_CHOICE = click.Choice(["onnx", "torchscript"])
DEVICE_CHOICE = click.Choice(["auto", "cpu", "cuda"])


@main.command("serve-cloud")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--port", default=9999, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--artifacts", default="artifacts", show_default=True, help="Directory of bundles to serve.")
@click.option("--backend", default="onnx", show_default=True, type=BACKEND_CHOICE)
@click.option("--device", default="auto", show_default=True, type=DEVICE_CHOICE)
@click.option("--max-frame-mb", default=64.0, show_default=True, type=click.FloatRange(0.001, 4096),
              help="Largest tensor payload accepted.")
@click.option("--threads", default=0, type=click.IntRange(0, 256), help="Compute threads per tail (0: library default).")
@handle_errors
def serve_cloud(host, port, artifacts, backend, device, max_frame_mb, threads):
    """Serve the tails of the bundles in --artifacts to edges (until SIGINT/SIGTERM)."""
    from runtime.server import serve_cloud as serve
    serve(host, port, artifacts, backend, device, max_frame_mb, threads)


@main.command("run-edge")
@click.option("--cloud", required=True, help="HOST:PORT of serve-cloud.")
@click.option("--model", default="resnet50", show_default=True, help="Model id of the bundle (see its manifest).")
@click.option("--split", required=True, type=click.IntRange(0, None), help="Split point of the bundle.")
@click.option("--artifacts", default="artifacts", show_default=True, help="Directory holding the bundle.")
@click.option("--backend", default="onnx", show_default=True, type=BACKEND_CHOICE)
@click.option("--device", default="auto", show_default=True, type=DEVICE_CHOICE)
@click.option("--dataset", default="cifar100", show_default=True,
              help="cifar100, cifar10, npz:PATH, folder:PATH or synthetic.")
@click.option("--data-dir", default="data", show_default=True, help="Where CIFAR archives are kept.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, None), help="Samples to run.")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(1, None))
@click.option("--shuffle", is_flag=True, help="Shuffle the samples (with --seed).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(0, None),
              help="Requests before measuring (excluded).")
@click.option("--verbose", is_flag=True, help="Print Prediction / Ground Truth per sample.")
@click.option("--report", default=None, help="Write the full report as JSON to this file.")
@click.option("--timeout", default=30.0, show_default=True, type=float, help="Seconds to wait for the cloud.")
@click.option("--threads", default=0, type=click.IntRange(0, 256), help="Compute threads for the head.")
@handle_errors
def run_edge(cloud, model, split, artifacts, backend, device, dataset, data_dir, limit, batch_size, shuffle, seed,
             warmup, verbose, report, timeout, threads):
    """Run the head here, the tail on the cloud, and print the seed's report."""
    from runtime.edge import run_edge as run
    run(cloud, model, split, artifacts, backend, device, dataset, data_dir, limit, batch_size, shuffle, seed,
        warmup, verbose, report, timeout, threads)


@main.command()
@click.option("--split", default="20", show_default=True, help="Split point of the seed's ResNet-50.")
@click.option("--weights", default=None, help="Weights file (default: weights/resnet50-best.pth if present).")
@click.option("--dataset", default=None, help="Default: cifar100 if it is in --data-dir, else synthetic.")
@click.option("--data-dir", default="data", show_default=True)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, None))
@click.option("--backend", default="onnx", show_default=True, type=BACKEND_CHOICE)
@click.option("--artifacts", default="artifacts", show_default=True, help="Directory of bundles.")
@handle_errors
def demo(split, weights, dataset, data_dir, limit, backend, artifacts):
    """Export the seed's ResNet-50 if needed, serve its tail locally, run the edge, print the report."""
    from runtime.demo import run_demo
    run_demo(split, weights, dataset, artifacts, data_dir, limit, backend)


if __name__ == "__main__":
    main()
