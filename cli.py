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


def parse_ints(text, what, count=None):
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter("{} must be integers separated by commas, e.g. 3,32,32".format(what))
    if count is not None and len(values) != count or any(v <= 0 for v in values):
        raise click.BadParameter("{} must be {} positive integers, e.g. 3,32,32".format(what, count))
    return values


def parse_floats(text, what):
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter("{} must be numbers separated by commas, e.g. 0.5,0.5,0.5".format(what))


def parse_formats(text):
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise click.BadParameter("unknown format {}; choose from {}".format(
            ", ".join(unknown) or "(none)", ",".join(FORMATS)))
    return formats


MODEL_HELP = "resnet50 (the seed's CIFAR-100 ResNet-50), torchvision:NAME, or package.module:function"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(debug):
    """Cloud-edge split inference: export a model cut in two, serve its tail, run its head on the edge."""


@main.command()
@click.option("--model", default="resnet50", show_default=True, help=MODEL_HELP)
@click.option("--input-shape", default=None, help="C,H,W of one input (default: the model's own).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@handle_errors
def layers(model, input_shape, as_json):
    """List the valid split points of a model."""
    from exporter.bundle import describe_points
    from exporter.report import print_points
    shape = parse_ints(input_shape, "--input-shape", 3) if input_shape else None
    config, points = describe_points(model, shape)
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
@click.option("--formats", default="onnx,torchscript", show_default=True, help="Comma-separated: onnx, torchscript.")
@click.option("--opset", default=15, show_default=True, type=int,
              help="ONNX opset; 15 loads in onnxruntime 1.10 on JetPack 4.6.")
@click.option("--input-shape", default=None, help="C,H,W of one input (default: the model's own).")
@click.option("--mean", default=None, help="Per-channel normalisation mean, e.g. 0.5,0.5,0.5.")
@click.option("--std", default=None, help="Per-channel normalisation std.")
@click.option("--out", default="artifacts", show_default=True, help="Directory that receives the bundle.")
@click.option("--atol", default=None, type=float, help="Verification absolute tolerance [default: 1e-4].")
@click.option("--rtol", default=None, type=float, help="Verification relative tolerance [default: 1e-3].")
@handle_errors
def export(model, split, weights, random_init, formats, opset, input_shape, mean, std, out, atol, rtol):
    """Cut a model at a split point and write a verified head/tail bundle."""
    from exporter.bundle import export_bundle
    from exporter.report import print_export
    from exporter.verify import DEFAULT_ATOL, DEFAULT_RTOL
    shape = parse_ints(input_shape, "--input-shape", 3) if input_shape else None
    path, manifest = export_bundle(
        model, split, weights=weights, random_init=random_init, formats=parse_formats(formats), opset=opset,
        out_dir=out, input_shape=shape, mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"),
        atol=DEFAULT_ATOL if atol is None else atol, rtol=DEFAULT_RTOL if rtol is None else rtol)
    print_export(path, manifest)


@main.command()
@click.option("--split", default="20", show_default=True, help="Split point of the seed's ResNet-50.")
@click.option("--weights", default=None, help="Weights file (default: weights/resnet50-best.pth if present).")
@click.option("--out", default="artifacts", show_default=True, help="Directory that receives the bundle.")
@handle_errors
def demo(split, weights, out):
    """Export the seed's ResNet-50 (random weights unless trained ones exist) and show its split table."""
    from exporter.demo import run_demo
    run_demo(split, weights, out)


if __name__ == "__main__":
    main()
