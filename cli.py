#!/usr/bin/env python3
"""edgesplit: cloud-edge split inference.  Each command parses its options and calls one function.

The exporter (torch, torchvision, onnx) is imported only inside the commands that
need it, so the edge commands run on a Jetson with numpy + onnxruntime alone.
Python 3.6 syntax: this file is on the edge path.
"""
import functools
import json
import os
import sys

import click

from runtime.bundle.schema import parse_split
from runtime.edge import console, power
from runtime.errors import UserError, relayed
from runtime.wire import auth

FORMATS = ("onnx", "torchscript")


class AliasOption(click.Option):
    """An option whose first name is the one --help shows; the others are old spellings, still accepted."""

    def get_help_record(self, ctx):
        names = self.opts
        self.opts = names[:1]
        try:
            return super(AliasOption, self).get_help_record(ctx)
        finally:
            self.opts = names


def _fail(message, code=1):
    click.echo("error: {}".format(relayed(message)), err=True)
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
        except click.ClickException:
            raise  # usage errors: click prints them and exits 2
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


MODEL_HELP = ("resnet50 (the seed's CIFAR-100 ResNet-50), torchvision:NAME (or its bundles' id, torchvision-NAME), "
              "or package.module:function")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(debug):
    """Cloud-edge split inference: export a model cut in two, serve its tail, run its head on the edge."""
    console.set_command(click.get_current_context().invoked_subcommand)  # the prefix of the edge's lines


TRACE_MODULE_HELP = ("Use only this submodule of the model (e.g. a detector's backbone, when torch.fx cannot trace "
                     "the whole); its bundles' model id is <model id>-<module path>.")
LEAF_MODULE_HELP = ("Comma-separated module classes torch.fx calls whole instead of tracing into (a block whose own "
                    "forward cannot be traced, such as YOLOv8's C2f); no split point falls inside them.")


def names_option(ctx, param, value):
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


@main.command()
@click.option("--model", default="resnet50", show_default=True, help=MODEL_HELP)
@click.option("--input-shape", default=None, callback=shape_option,
              help="C,H,W of one input (default: the model's own).")
@click.option("--max-tensors", default=1, show_default=True, type=click.IntRange(1, 8),
              help="Also list the cuts where up to this many tensors cross (numbered K.J after point K).")
@click.option("--trace-module", default=None, help=TRACE_MODULE_HELP)
@click.option("--leaf-module", "leaf_modules", default=None, callback=names_option, help=LEAF_MODULE_HELP)
@click.option("--weights", default=None,
              help="Also load this state-dict file as `export --weights` does: one that does not fit the model is "
                   "refused (the points do not depend on weights).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@handle_errors
def layers(model, input_shape, max_tensors, trace_module, leaf_modules, weights, as_json):
    """List the valid split points of a model."""
    from exporter.bundle import describe_points
    from exporter.report import print_points
    config, points = describe_points(model, input_shape, max_tensors, trace_module, leaf_modules, weights)
    if as_json:
        click.echo(json.dumps({"model": config.model_id, "input_shape": list(config.input_shape),
                               "default_weights": config.default_weights, "points": points}, indent=2))
    else:
        print_points(config, points)


@main.command()
@click.option("--model", default="resnet50", show_default=True, help=MODEL_HELP)
@click.option("--split", default=None, help="Split point: an index from `layers`, its name, or a cut of several tensors (K.J, `layers --max-tensors`).")
@click.option("--segments", is_flag=True, help="Instead of one split, export every segment (for profiling).")
@click.option("--max-tensors", default=1, show_default=True, type=click.IntRange(1, 8),
              help="With --segments: also list the cuts where up to this many tensors cross, for the planner.")
@click.option("--trace-module", default=None, help=TRACE_MODULE_HELP)
@click.option("--leaf-module", "leaf_modules", default=None, callback=names_option, help=LEAF_MODULE_HELP)
@click.option("--postprocess", is_flag=True,
              help="A torchvision RetinaNet, FCOS or SSD detector: split inside its backbone (--trace-module, default "
                   "backbone) and run its own head, anchors and NMS on the cloud after the tail; the bundle outputs "
                   "boxes, scores and labels (TorchScript tail), verified against the whole detector.")
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
@click.option("--store", "--artifacts", "--out", "out", cls=AliasOption, default="artifacts", show_default=True,
              help="The cloud's bundle store: the directory that receives the bundle (serve-cloud serves it).")
@click.option("--atol", default=None, type=float, callback=positive_option,
              help="Verification: max |diff| may reach atol + rtol x max |reference| [default: 1e-4].")
@click.option("--rtol", default=None, type=float, callback=positive_option,
              help="Verification tolerance relative to the tensor's max |value| [default: 1e-3].")
@handle_errors
def export(model, split, segments, out, **options):
    """Cut a model at a split point and write a verified head/tail bundle."""
    from exporter.options import ExportOptions
    from exporter.report import print_export, verification_summary
    if (split is None) == (not segments):
        raise click.UsageError("give --split K (one bundle) or --segments (every segment, for profiling)")
    given = {k: v for k, v in options.items() if not (k in ("atol", "rtol") and v is None)}  # None: the default
    options = ExportOptions(out_dir=out, **given)
    if segments:
        from exporter.segments import export_segments
        path, manifest = export_segments(model, options)
        ver = manifest["verification"]
        click.echo("segments {} -> {} ({} segments, verified: {})".format(
            manifest["bundle_id"], path, len(manifest["segments"]), verification_summary(ver)))
        if not ver["meaningful"]:
            click.echo("verification NOT MEANINGFUL: {}".format(ver["reason"]))
        return
    from exporter.bundle import export_bundle
    path, manifest = export_bundle(model, split, options)
    print_export(path, manifest)


BACKEND_CHOICE = click.Choice(["onnx", "torchscript"])
OBJECTIVE_CHOICE = click.Choice(["latency", "p95", "throughput", "energy"])


def ints_option(ctx, param, value):
    values = _split_values(value, int, "4,8", param)
    return tuple(values) if values else ()


@main.command("export-triton")
@click.argument("bundle")
@click.option("--repo", required=True, help="The Triton model repository that receives the tail (created if missing).")
@click.option("--platform", default="onnxruntime", show_default=True,
              type=click.Choice(["onnxruntime", "pytorch", "python"]),
              help="onnxruntime_onnx, pytorch_libtorch, or the python backend running this project's backends.")
@click.option("--name", default=None, help="The model's name in the repository [default: <model id>-s<split>].")
@click.option("--version", default=1, show_default=True, type=click.IntRange(1, None),
              help="The version directory the tail is written to.")
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(0, None),
              help="Triton's max_batch_size (0: no batching).")
@click.option("--max-delay-us", "--max-queue-delay-us", "max_queue_delay_us", cls=AliasOption, default=100,
              show_default=True, type=click.IntRange(0, None),
              help="Dynamic batching: how long a request may wait for others (microseconds, as Triton's "
                   "max_queue_delay_microseconds).")
@click.option("--preferred-batch", default=None, callback=ints_option, help="Dynamic batching's preferred sizes, e.g. 4,8.")
@click.option("--instances", default=1, show_default=True, type=click.IntRange(1, None),
              help="Copies of the model Triton runs at once (instance_group count).")
@click.option("--kind", default="cpu", show_default=True, type=click.Choice(["cpu", "gpu"]),
              help="Where Triton runs those instances (instance_group kind).")
@click.option("--tensorrt", is_flag=True, help="onnxruntime: TensorRT as the GPU execution accelerator.")
@click.option("--backend", default="onnx", show_default=True, type=BACKEND_CHOICE,
              help="python platform: this project's backend that runs the tail.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="python platform: auto = CUDA for --kind gpu, else the CPU.")
@click.option("--input-dtype", default=None, metavar="float32|float16",
              help="The dtype the tail takes; float16 (for run-edge --compress fp16) casts to the float32 boundary "
                   "inside the model [default: the manifest's boundary dtype].")
@handle_errors
def export_triton(bundle, **options):
    """Write a bundle's tail into an NVIDIA Triton model repository (config checked against the model file)."""
    from runtime.cloud.triton import TritonOptions, export_triton
    entry, _ = export_triton(bundle, TritonOptions(**options))
    click.echo("triton model {} ({}) -> {}".format(os.path.basename(entry), options["platform"], entry))


def split_value(value):
    """A --split value as parse_split gives it (an index, or "K.J"), or a point's name, left for the command to
    resolve against the model's points (runtime/edge/points.py); "auto" and "local" as they are."""
    text = value.strip()
    if not text:
        raise ValueError("an empty split")
    try:
        return parse_split(text)
    except ValueError:
        return text


def split_option(ctx, param, value):
    if value is None:
        return None
    try:
        return split_value(value)
    except ValueError:
        raise click.BadParameter("expected a split point (an index or a name from `layers`), auto or local",
                                 param=param)


DEVICE_CHOICE = click.Choice(["auto", "cpu", "cuda"])
INFERENCE_TOKEN_ENV = auth.TOKEN_ENV[auth.INFERENCE]
ADMIN_TOKEN_ENV = auth.TOKEN_ENV[auth.ADMIN]


def _client_command(options_class, command, options):
    """Run a client command (run-edge, plan, sweep, profile) on its options; a refusal of a model that neither the
    cache nor the cloud holds is one line listing those they hold (runtime/edge/models.py)."""
    from runtime.edge.models import refusals
    o = options_class(**options)
    with refusals(o):
        return command(o)


def client_security(token=True):
    """--tls/--tls-ca/--tls-cert/--tls-key (and --token) on a command that connects to serve-cloud,
    handed to it as one ``security`` argument (runtime.wire.tls.ClientSecurity)."""
    def decorate(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            from runtime.wire.tls import ClientSecurity
            kwargs["security"] = ClientSecurity(kwargs.pop("tls"), kwargs.pop("tls_ca"), kwargs.pop("tls_cert"),
                                                kwargs.pop("tls_key"), kwargs.pop("token", None))
            return f(*args, **kwargs)
        options = [
            click.option("--tls", is_flag=True, help="Connect over TLS, verifying the server with the system's CAs."),
            click.option("--tls-ca", default=None, help="Connect over TLS, verifying the server against this CA "
                                                        "(PEM)."),
            click.option("--tls-cert", default=None, help="This side's certificate (PEM) for mutual TLS."),
            click.option("--tls-key", default=None, help="The key of --tls-cert (PEM)."),
        ]
        if token:
            options.append(click.option("--token", default=None, envvar=INFERENCE_TOKEN_ENV,
                                        help="The cloud's inference token, proven without sending it [env {}]."
                                        .format(INFERENCE_TOKEN_ENV)))
        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper
    return decorate


def with_options(*options):
    """Apply click options in the order given (the first is listed first in --help)."""
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


# options that several commands take, declared once
def cloud_option(required=True, help="HOST:PORT of serve-cloud."):
    return click.option("--cloud", required=required, default=None, help=help)


MODEL_ID_OPTION = click.option("--model", default=None,
                               help="The model, as `export` takes it (resnet50, torchvision:NAME, "
                                    "package.module:function) or as its bundles' id (torchvision-NAME) [default: the "
                                    "one model the cache and the cloud hold; resnet50 where nothing is held; several "
                                    "held are an error listing them].")
CACHE_OPTION = click.option("--cache", "--artifacts", "cache", cls=AliasOption, default="artifacts", show_default=True,
                            help="The edge's bundle cache; heads missing here are fetched from the cloud.")
BACKEND_HELP = "The inference library that runs the model here."
DEVICE_HELP = "Where the backend runs (auto: CUDA where the backend has it, else the CPU)."
BACKEND_OPTION = click.option("--backend", default="onnx", show_default=True, type=BACKEND_CHOICE, help=BACKEND_HELP)
DEVICE_OPTION = click.option("--device", default="auto", show_default=True, type=DEVICE_CHOICE, help=DEVICE_HELP)


def timeout_option(default, help="Seconds to wait for the cloud."):
    return click.option("--timeout", default=default, show_default=True, type=float, help=help)


def threads_option(help="Compute threads for the head (0: library default)."):
    return click.option("--threads", default=0, type=click.IntRange(0, 256), help=help)


def batch_size_option(most=None):
    return click.option("--batch-size", default=1, show_default=True, type=click.IntRange(1, most),
                        help="Samples per request (one head run, one frame, one tail run).")


COMPRESS_OPTION = click.option("--compress", default="none", show_default=True,
                               type=click.Choice(["none", "fp16", "int8"]),
                               help="Lossy compression of the activation sent (int8: per-channel scale from its "
                                    "range); plan predicts the bytes it sends.")
CODEC_OPTION = click.option("--codec", default="none", show_default=True, type=click.Choice(["none", "zstd", "lz4"]),
                            help="Lossless codec after --compress (needs the zstandard / lz4 package on both sides).")
BANDWIDTH_OPTION = click.option("--bandwidth", default=None, type=click.FloatRange(0.001, None),
                                help="Plan for this bandwidth (Mbit/s) instead of the measured one.")
RTT_OPTION = click.option("--rtt", default=None, type=click.FloatRange(0, None),
                          help="Plan for this round-trip time (ms).")
OBJECTIVE_HELP = ("latency (the expected, over the link's samples), p95 (their 95th percentile), throughput, or "
                  "energy: the least edge energy per sample (compute, from an edge profile made with --power, plus "
                  "the radio's per byte).")
LINK_PROFILE_OPTION = click.option("--link-profile", default=None, metavar="FILE",
                                   help="Plan over this link trace's throughput, one sample per second (a Mahimahi "
                                        "file or a seconds,mbit CSV) instead of the probe's one rate; --bandwidth "
                                        "overrides it.")
PLANNING_OPTIONS = (
    click.option("--max-latency-ms", default=None, type=click.FloatRange(0.001, None),
                 help="Choose only among splits predicted within this latency (ms); none within it is an error."),
    click.option("--reprofile", is_flag=True,
                 help="Measure this edge's profile again (ignore and replace the cached one), e.g. after it was "
                      "measured on a busy machine."),
    click.option("--radio-nj-per-byte", default=None, type=click.FloatRange(0, None),
                 help="The radio's energy per byte sent or received (nJ), for the energy objective [default: 2318.5, "
                      "Wi-Fi at 20 Mbit/s up; LTE about 4000-14000; see docs/PLANNING.md]."),
)
POWER_OPTIONS = (
    click.option("--power", default="auto", show_default=True, type=click.Choice(power.SOURCES),
                 help="Measure the edge's energy with this source (auto: the first readable of ina3221, "
                      "jtop, rapl; a source named here that is not readable is an error)."),
    click.option("--sysfs-root", default="/", show_default=True, metavar="DIR",
                 help="Read the power sources' sysfs under DIR (DIR/sys), e.g. the host's mounted in a container."),
)
DATASET_OPTIONS = (
    click.option("--dataset", default="cifar100", show_default=True,
                 help="cifar100, cifar10, npz:PATH, folder:PATH or synthetic."),
    click.option("--data-dir", default="data", show_default=True, help="Where CIFAR archives are kept."),
    click.option("--limit", default=100, show_default=True, type=click.IntRange(1, None), help="Samples to run."),
)


@main.command("serve-triton")
@click.option("--repo", required=True, help="The Triton model repository to serve (export-triton writes it).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--http-port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="KServe v2 over HTTP (0 picks a free port).")
@click.option("--grpc-port", default=8001, show_default=True, type=click.IntRange(0, 65535),
              help="KServe v2 over gRPC (0 picks a free port).")
@click.option("--metrics-port", default=8002, show_default=True, type=click.IntRange(0, 65535),
              help="Prometheus metrics (0 picks a free port).")
@click.option("--model-control", default="explicit", show_default=True, type=click.Choice(["explicit", "none"]),
              help="explicit: every model loaded at start, then loads and unloads through the repository API.")
@click.option("--python-env", default=None,
              help="Environment of the python backend's models (numpy<2, onnxruntime) [default: $EDGESPLIT_TRITON_ENV, "
                   "else .venv-triton, else this Python's].")
@click.option("--tritonserver", default=None, help="The tritonserver binary [default: PATH, else nvidia-pytriton's].")
@click.option("--start-timeout", default=120.0, show_default=True, type=click.FloatRange(1, 3600),
              help="Seconds for every model of the repository to be ready.")
@handle_errors
def serve_triton(**options):
    """Run an NVIDIA Triton server on a model repository (development and tests; until SIGINT/SIGTERM)."""
    from runtime.cloud.triton_server import ServeTritonOptions
    from runtime.cloud.triton_server import serve_triton as serve
    sys.exit(serve(ServeTritonOptions(**options)))


@main.command("serve-cloud")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--port", default=9999, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--store", "--artifacts", "artifacts", cls=AliasOption, default="artifacts", show_default=True,
              help="The cloud's bundle store: the directory of bundles to serve.")
@with_options(BACKEND_OPTION, DEVICE_OPTION)
@click.option("--max-frame-mb", default=64.0, show_default=True, type=click.FloatRange(0.001, 4096),
              help="Largest tensor payload accepted.")
@threads_option("Compute threads per tail (0: library default).")
@click.option("--allow-push", is_flag=True, help="Accept bundles pushed with the admin token.")
@click.option("--admin-token", default=None, envvar=ADMIN_TOKEN_ENV, help="Admin token for pushes [env {}].".format(
    ADMIN_TOKEN_ENV))
@click.option("--model", "export_model", default=None,
              help="Export splits of this model on demand when an edge asks for one not held (needs the exporter).")
@click.option("--weights", "export_weights", default=None,
              help="With --model: the state-dict file its exports load, checked at start [default: the model's own "
                   "file, resnet50's weights/resnet50-best.pth].")
@click.option("--random-init", "export_random_init", is_flag=True,
              help="With --model: its exports get random weights (chance-level accuracy).")
@click.option("--max-batch", default=1, show_default=True, type=click.IntRange(1, 1024),
              help="Dynamic batching: run up to this many samples of one tail together, across edges (1: off).")
@click.option("--max-delay-ms", default=2.0, show_default=True, type=click.FloatRange(0, 1000),
              help="Dynamic batching: how long a request may wait for others to join its batch.")
@click.option("--max-connections", default=256, show_default=True, type=click.IntRange(1, 100000),
              help="Connections served at once (a thread each); more are refused with a 'busy' error.")
@click.option("--read-timeout", default=30.0, show_default=True, type=click.FloatRange(0.5, 3600),
              help="Seconds a frame may take to arrive once begun, and a reply to be read; slower peers are cut off.")
@click.option("--hello-timeout", default=10.0, show_default=True, type=click.FloatRange(0.5, 3600),
              help="Seconds a new connection may stay silent before it is closed.")
@click.option("--tls-cert", default=None, help="Serve over TLS with this certificate (PEM; with --tls-key).")
@click.option("--tls-key", default=None, help="The key of --tls-cert (PEM).")
@click.option("--tls-client-ca", default=None,
              help="Mutual TLS: accept only clients whose certificate this CA (PEM) signed.")
@click.option("--token", default=None, envvar=INFERENCE_TOKEN_ENV,
              help="Inference token every edge must prove (HMAC over a nonce) [env {}].".format(INFERENCE_TOKEN_ENV))
@click.option("--cuda-graphs", is_flag=True,
              help="Replay each tail as a captured CUDA graph per batch shape (--backend torchscript --device cuda).")
@handle_errors
def serve_cloud(**options):
    """Serve the tails of the bundles in --store to edges (until SIGINT/SIGTERM)."""
    from runtime.cloud.options import ServeOptions
    from runtime.cloud.server import serve_cloud as serve
    serve(ServeOptions(**options))


@main.command("run-edge")
@cloud_option(required=False, help="HOST:PORT of serve-cloud, or grpc://HOST:PORT / http://HOST:PORT of an NVIDIA "
                                   "Triton server (KServe v2); not needed with --split local.")
@click.option("--triton-model", default=None,
              help="With a Triton --cloud: the repository's model to use [default: <model>-s<split>].")
@MODEL_ID_OPTION
@click.option("--split", default=None, callback=split_option,
              help="Split point (an index or a name from `layers`, or K.J), 'auto' (planned from profiles, 'local' "
                   "included), or 'local' (the whole model on this device from --cache, no cloud); default: the "
                   "bundle active on the cloud.")
@click.option("--objective", default="latency", show_default=True, type=OBJECTIVE_CHOICE,
              help="What --split auto optimises: " + OBJECTIVE_HELP)
@with_options(*PLANNING_OPTIONS)
@with_options(BANDWIDTH_OPTION, RTT_OPTION, LINK_PROFILE_OPTION, CACHE_OPTION)
@click.option("--cache-keep", default=8, show_default=True, type=click.IntRange(1, None),
              help="Bundles kept in the cache (least recently used go first).")
@click.option("--follow", is_flag=True, help="Switch to a bundle the cloud activates even with --split given "
              "(without --split the run follows the active bundle anyway).")
@click.option("--no-follow", is_flag=True, help="Never switch when the cloud activates another bundle.")
@click.option("--adaptive", is_flag=True, help="Re-plan from the bandwidth seen during the run; switch split "
              "when another is predicted better by 15%.")
@with_options(BACKEND_OPTION, DEVICE_OPTION, *DATASET_OPTIONS)
@batch_size_option()
@click.option("--shuffle", is_flag=True, help="Shuffle the samples (with --seed).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the samples' shuffle and synthetic data.")
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(0, None),
              help="Requests before measuring (excluded).")
@click.option("--verbose", is_flag=True, help="Print Prediction / Ground Truth per sample.")
@click.option("--out-json", "--report", "report", cls=AliasOption, default=None,
              help="Write the full report as JSON to this file.")
@timeout_option(30.0)
@threads_option()
@click.option("--inflight", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Requests in flight at once: >1 overlaps the next head with the transfer and tail of earlier "
                   "ones (throughput); 1 keeps every latency figure free of waiting.")
@with_options(COMPRESS_OPTION, CODEC_OPTION)
@click.option("--busy-poll/--no-busy-poll", default=True, show_default=True,
              help="Spin (at most 2 ms a request) when a reply is due instead of sleeping: about 0.15 ms less "
                   "per request; --no-busy-poll saves the edge's CPU.")
@click.option("--reconnect-timeout", default=60.0, show_default=True, type=click.FloatRange(0, None),
              help="Seconds to keep reconnecting (backoff with jitter) when the cloud goes away; unanswered "
                   "requests are sent again.")
@click.option("--fallback", default="none", show_default=True, type=click.Choice(["none", "local"]),
              help="local: once --reconnect-timeout is over, run the rest with the full model in --cache "
                   "(marked 'local' in the report).")
@click.option("--interval-ms", default=0.0, show_default=True, type=click.FloatRange(0, None),
              help="Release a batch every this many ms, like frames from a camera (0: back to back); the report "
                   "adds the wait for the edge and the latency from release.")
@click.option("--deadline-ms", default=None, type=click.FloatRange(0, None, min_open=True), metavar="D",
              help="Latency budget from release: a request whose reply is not back when finishing it on the edge "
                   "would still meet D, or whose reply is overdue by the link's bound, is finished on the edge (the "
                   "split's tail, fetched with its head, or the whole model); late replies are discarded.")
@click.option("--max-age-ms", default=None, type=click.FloatRange(0, None, min_open=True), metavar="A",
              help="With --interval-ms: no frame waits behind the link longer than A; one that did is answered on "
                   "the edge or dropped (--stale).")
@click.option("--stale", default="local", show_default=True, type=click.Choice(["local", "drop"]),
              help="What happens to a frame older than --max-age-ms: answered on the edge, or dropped (counted).")
@click.option("--start-at", default=None, type=float, metavar="UNIX_S",
              help="Hold the first measured request until this wall-clock time (Unix seconds), to line runs or "
                   "edges up on one clock.")
@with_options(*POWER_OPTIONS)
@handle_errors
@client_security()
def run_edge(**options):
    """Run the head here, the tail on the cloud, and print the seed's report."""
    from runtime.edge.options import RunOptions
    from runtime.edge.run import run_edge as run
    _client_command(RunOptions, run, options)


@main.command()
@cloud_option()
@with_options(MODEL_ID_OPTION, CACHE_OPTION, BACKEND_OPTION, DEVICE_OPTION, batch_size_option(1024), BANDWIDTH_OPTION,
              RTT_OPTION, LINK_PROFILE_OPTION)
@click.option("--objective", default="latency", show_default=True, type=OBJECTIVE_CHOICE, help=OBJECTIVE_HELP)
@with_options(*PLANNING_OPTIONS)
@click.option("--edge-profile", default=None, help="Use this edge profile (from `profile --out-json`).")
@click.option("--cloud-profile", default=None, help="Use this cloud profile instead of asking the cloud.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON instead of a table.")
@with_options(COMPRESS_OPTION, CODEC_OPTION)
@timeout_option(600.0)
@threads_option("Compute threads for the edge's profile.")
@with_options(*POWER_OPTIONS)
@handle_errors
@client_security()
def plan(**options):
    """Predict the latency (and energy) of every split from measured profiles and the network, and choose one;
    --power: the meter the edge's profile measures its energy with, where --objective energy needs it."""
    from runtime.edge.options import PlanOptions
    from runtime.edge.plan import run_plan
    _client_command(PlanOptions, run_plan, options)


@main.command()
@cloud_option()
@click.option("--splits", default=None, show_default="0,3,10,16,20,22,local",
              help="Comma-separated split points (indexes or names from `layers`); local: the whole model on the "
                   "edge, from its cache.",
              callback=lambda ctx, param, value: _split_values(value, split_value, "0,3,10,16,20,22,local", param))
@with_options(MODEL_ID_OPTION, CACHE_OPTION, BACKEND_OPTION, DEVICE_OPTION, *DATASET_OPTIONS)
@batch_size_option()
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the samples' shuffle and synthetic data.")
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(0, None),
              help="Requests before measuring (excluded).")
@click.option("--out-csv", "--csv", "csv_path", cls=AliasOption, default=None, help="Write the table as CSV to this file.")
@click.option("--out-png", "--png", "png_path", cls=AliasOption, default=None,
              help="Write the chart (stacked bars + predictions) as PNG to this file.")
@with_options(BANDWIDTH_OPTION, RTT_OPTION, timeout_option(600.0), threads_option())
@with_options(*PLANNING_OPTIONS[1:], *POWER_OPTIONS)
@handle_errors
@client_security()
def sweep(**options):
    """Measure every split in --splits on the same samples: the seed's table, a CSV and a chart (with the edge's
    energy per sample, measured and predicted, where --power finds a meter)."""
    from runtime.edge.options import SweepOptions
    from runtime.edge.sweep import run_sweep
    _client_command(SweepOptions, run_sweep, options)


@main.command()
@click.option("--out-json", "--out", "out", cls=AliasOption, required=True, help="Write the profile as JSON to this file.")
@cloud_option(required=False, help="Fetch the segments from this serve-cloud.")
@click.option("--segments-dir", "--segments", "segments_dir", cls=AliasOption, default=None,
              help="...or profile this local segments bundle (a directory `export --segments` wrote).")
@with_options(MODEL_ID_OPTION, CACHE_OPTION, BACKEND_OPTION, DEVICE_OPTION, batch_size_option(1024),
              timeout_option(600.0), threads_option("Compute threads (0: library default)."))
@with_options(*POWER_OPTIONS)
@handle_errors
@client_security()
def profile(**options):
    """Measure this side's latency (and, where --power finds a meter, energy) of every segment of a model; write it
    as JSON for `plan --edge-profile`."""
    from runtime.edge.options import ProfileOptions
    from runtime.edge.plan import run_profile
    _client_command(ProfileOptions, run_profile, options)


@main.command()
@cloud_option()
@timeout_option(10.0)
@handle_errors
@client_security()
def status(cloud, timeout, security):
    """Print serve-cloud's counters (requests, errors by kind, bytes, connections) as JSON."""
    from runtime.edge.run import print_status
    print_status(cloud, timeout, security)


@main.command()
@click.argument("bundle")
@click.option("--cloud", default=None, help="HOST:PORT of serve-cloud (started with --allow-push).")
@click.option("--to", "to_dir", default=None, help="Copy into this directory instead (an SD card, a mounted disk).")
@click.option("--triton-repo", default=None,
              help="Add its tail as the next version of <model>-s<split> in this Triton model repository instead.")
@click.option("--triton", "triton_servers", multiple=True, metavar="URL",
              help="With --triton-repo: a Triton server (grpc://H:P or http://H:P) to load it on; repeat for each.")
@click.option("--platform", default="python", show_default=True, type=click.Choice(["python", "onnxruntime",
                                                                                     "pytorch"]),
              help="With --triton-repo: the entry's platform (as export-triton).")
@click.option("--activate", is_flag=True, help="Make it the bundle edges of this model use (they switch).")
@click.option("--admin-token", default=None, envvar=ADMIN_TOKEN_ENV, help="The server's admin token [env {}].".format(
    ADMIN_TOKEN_ENV))
@click.option("--timeout", default=120.0, show_default=True, type=float,
              help="Seconds to wait for the cloud or the Triton servers.")
@handle_errors
@client_security(token=False)
def push(bundle, **o):
    """Deploy a bundle: upload it to the cloud (--cloud), copy it (--to), or add it to a Triton fleet
    (--triton-repo), verified."""
    from runtime.edge.deploy import copy_bundle, push_to_cloud
    if o["triton_servers"] and not o["triton_repo"]:
        raise click.UsageError("--triton goes with --triton-repo")
    if sum(bool(o[k]) for k in ("cloud", "to_dir", "triton_repo")) != 1:
        raise click.UsageError("give exactly one of --cloud HOST:PORT, --to DIR or --triton-repo DIR")
    if o["triton_repo"]:
        _push_triton(bundle, o)
    elif o["to_dir"]:
        click.echo("copied to {}".format(copy_bundle(bundle, o["to_dir"])))
    else:
        done = push_to_cloud(bundle, o["cloud"], o["admin_token"], o["activate"], o["timeout"],
                             security=o["security"])
        click.echo("pushed {} to {}{}{}".format(done["bundle_id"], o["cloud"], "" if done.get("uploaded") else
                                                " (already there, nothing uploaded)",
                                                ", active" if done.get("activated") else ""))


def _push_triton(bundle, o):
    from runtime.cloud.triton import TritonOptions
    from runtime.cloud.triton_deploy import push_to_triton
    done = push_to_triton(bundle, o["triton_repo"], o["triton_servers"], o["activate"],
                          TritonOptions(platform=o["platform"]), o["timeout"])
    click.echo("pushed {} to {} as {} version {}{}{}{}".format(
        done["bundle_id"], o["triton_repo"], done["entry"], done["version"], "" if done["added"] else
        " (already there)", ", loaded on {}".format(", ".join(done["loaded"])) if done["loaded"] else "",
        ", active" if done["activated"] else ""))


@main.command()
@click.option("--split", default="20", show_default=True,
              help="Split point of the seed's ResNet-50 (an index or a name from `layers`).")
@click.option("--weights", default=None, help="Weights file (default: weights/resnet50-best.pth if present).")
@click.option("--dataset", default=None, help="Default: cifar100 if it is in --data-dir, else synthetic.")
@click.option("--data-dir", default="data", show_default=True, help="Where CIFAR archives are kept.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, None), help="Samples to run.")
@click.option("--backend", default="onnx", show_default=True, type=BACKEND_CHOICE, help=BACKEND_HELP)
@click.option("--store", "--artifacts", "artifacts", cls=AliasOption, default="artifacts", show_default=True,
              help="The bundle store the demo exports to and serves from (also the edge's cache here).")
@handle_errors
def demo(split, weights, dataset, data_dir, limit, backend, artifacts):
    """Export the seed's ResNet-50 if needed, serve its tail locally, run the edge, print the report."""
    from runtime.demo import run_demo
    run_demo(split, weights, dataset, artifacts, data_dir, limit, backend)


if __name__ == "__main__":
    main()
