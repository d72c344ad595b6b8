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
from runtime.wire import auth

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
@click.option("--split", default=None, help="Split point: an index from `layers`, or its name.")
@click.option("--segments", is_flag=True, help="Instead of one split, export every segment (for profiling).")
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
              help="Verification: max |diff| may reach atol + rtol x max |reference| [default: 1e-4].")
@click.option("--rtol", default=None, type=float, callback=positive_option,
              help="Verification tolerance relative to the tensor's max |value| [default: 1e-3].")
@handle_errors
def export(model, split, segments, weights, random_init, formats, opset, input_shape, mean, std, out, atol, rtol):
    """Cut a model at a split point and write a verified head/tail bundle."""
    from exporter.bundle import export_bundle
    from exporter.report import print_export
    from exporter.verify import DEFAULT_ATOL, DEFAULT_RTOL
    if (split is None) == (not segments):
        raise click.UsageError("give --split K (one bundle) or --segments (every segment, for profiling)")
    if segments:
        from exporter.segments import export_segments
        path, manifest = export_segments(model, weights, random_init, formats, opset, out, input_shape,
                                         DEFAULT_ATOL if atol is None else atol, DEFAULT_RTOL if rtol is None else rtol)
        from exporter.report import verification_summary
        ver = manifest["verification"]
        click.echo("segments {} -> {} ({} segments, verified: {})".format(
            manifest["bundle_id"], path, len(manifest["segments"]), verification_summary(ver)))
        if not ver["meaningful"]:
            click.echo("verification NOT MEANINGFUL: {}".format(ver["reason"]))
        return
    path, manifest = export_bundle(
        model, split, weights=weights, random_init=random_init, formats=formats, opset=opset,
        out_dir=out, input_shape=input_shape, mean=mean, std=std,
        atol=DEFAULT_ATOL if atol is None else atol, rtol=DEFAULT_RTOL if rtol is None else rtol)
    print_export(path, manifest)


BACKEND_CHOICE = click.Choice(["onnx", "torchscript"])
OBJECTIVE_CHOICE = click.Choice(["latency", "throughput"])


def split_option(ctx, param, value):
    if value is None or value == "auto":
        return value
    try:
        split = int(value)
    except ValueError:
        split = -1
    if split < 0:
        raise click.BadParameter("expected a split index (0, 1, ...) or 'auto'", param=param)
    return split
DEVICE_CHOICE = click.Choice(["auto", "cpu", "cuda"])
INFERENCE_TOKEN_ENV = auth.TOKEN_ENV[auth.INFERENCE]
ADMIN_TOKEN_ENV = auth.TOKEN_ENV[auth.ADMIN]


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


@main.command("serve-cloud")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--port", default=9999, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--artifacts", default="artifacts", show_default=True, help="Directory of bundles to serve (the store).")
@click.option("--backend", default="onnx", show_default=True, type=BACKEND_CHOICE)
@click.option("--device", default="auto", show_default=True, type=DEVICE_CHOICE)
@click.option("--max-frame-mb", default=64.0, show_default=True, type=click.FloatRange(0.001, 4096),
              help="Largest tensor payload accepted.")
@click.option("--threads", default=0, type=click.IntRange(0, 256), help="Compute threads per tail (0: library default).")
@click.option("--allow-push", is_flag=True, help="Accept bundles pushed with the admin token.")
@click.option("--admin-token", default=None, envvar=ADMIN_TOKEN_ENV, help="Admin token for pushes [env {}].".format(ADMIN_TOKEN_ENV))
@click.option("--model", "export_model", default=None,
              help="Export splits of this model on demand when an edge asks for one not held (needs the exporter).")
@click.option("--weights", "export_weights", default=None, help="Weights for on-demand exports.")
@click.option("--random-init", "export_random_init", is_flag=True, help="On-demand exports with random weights.")
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
def serve_cloud(host, port, artifacts, backend, device, max_frame_mb, threads, allow_push, admin_token, export_model,
                export_weights, export_random_init, max_batch, max_delay_ms, max_connections, read_timeout,
                hello_timeout, tls_cert, tls_key, tls_client_ca, token, cuda_graphs):
    """Serve the tails of the bundles in --artifacts to edges (until SIGINT/SIGTERM)."""
    from runtime.cloud.server import serve_cloud as serve
    if allow_push and not admin_token:
        raise UserError("--allow-push needs an admin token: --admin-token TOKEN or ${}".format(ADMIN_TOKEN_ENV))
    serve(host, port, artifacts, backend, device, max_frame_mb, threads, admin_token if allow_push else None,
          export_model, export_weights, export_random_init, max_batch=max_batch, max_delay_ms=max_delay_ms,
          max_connections=max_connections, read_timeout=read_timeout, hello_timeout=hello_timeout,
          cuda_graphs=cuda_graphs, tls=(tls_cert, tls_key, tls_client_ca), token=token)


@main.command("run-edge")
@click.option("--cloud", required=True, help="HOST:PORT of serve-cloud.")
@click.option("--model", default="resnet50", show_default=True, help="Model id of the bundle (see its manifest).")
@click.option("--split", default=None, callback=split_option,
              help="Split point, or 'auto' (planned from profiles); default: the bundle active on the cloud.")
@click.option("--objective", default="latency", show_default=True, type=OBJECTIVE_CHOICE,
              help="What --split auto optimises.")
@click.option("--bandwidth", default=None, type=click.FloatRange(0.001, None),
              help="Plan for this bandwidth (Mbit/s) instead of the measured one.")
@click.option("--rtt", default=None, type=click.FloatRange(0, None), help="Plan for this round-trip time (ms).")
@click.option("--cache", "--artifacts", "cache", default="artifacts", show_default=True,
              help="The edge's bundle cache; heads missing here are fetched from the cloud.")
@click.option("--cache-keep", default=8, show_default=True, type=click.IntRange(1, None),
              help="Bundles kept in the cache (least recently used go first).")
@click.option("--no-follow", is_flag=True, help="Do not switch when the cloud activates another bundle.")
@click.option("--adaptive", is_flag=True, help="Re-plan from the bandwidth seen during the run; switch split "
              "when another is predicted better by 15%.")
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
@click.option("--inflight", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Requests in flight at once: >1 overlaps the next head with the transfer and tail of earlier "
                   "ones (throughput); 1 keeps every latency figure free of waiting.")
@click.option("--compress", default="none", show_default=True, type=click.Choice(["none", "fp16", "int8"]),
              help="Lossy compression of the activation sent (int8: per-channel scale from its range).")
@click.option("--codec", default="none", show_default=True, type=click.Choice(["none", "zstd", "lz4"]),
              help="Lossless codec after --compress (needs the zstandard / lz4 package on both sides).")
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
@click.option("--start-at", default=None, type=float, metavar="UNIX_S",
              help="Hold the first measured request until this wall-clock time (Unix seconds), to line runs or "
                   "edges up on one clock.")
@handle_errors
@client_security()
def run_edge(cloud, model, split, objective, bandwidth, rtt, cache, cache_keep, no_follow, adaptive, backend, device,
             dataset, data_dir, limit, batch_size, shuffle, seed, warmup, verbose, report, timeout, threads, inflight,
             compress, codec, busy_poll, reconnect_timeout, fallback, interval_ms, start_at, security):
    """Run the head here, the tail on the cloud, and print the seed's report."""
    from runtime.edge.run import run_edge as run
    run(cloud, model, split, cache, backend, device, dataset, data_dir, limit, batch_size, shuffle, seed,
        warmup, verbose, report, timeout, threads, cache_keep, not no_follow,
        plan_options={"objective": objective, "bandwidth": bandwidth, "rtt": rtt}, adaptive=adaptive,
        inflight=inflight, compress=compress, codec=codec, busy_poll=busy_poll, reconnect_s=reconnect_timeout,
        fallback=fallback, security=security, interval_ms=interval_ms, start_at=start_at)


@main.command()
@click.option("--cloud", required=True, help="HOST:PORT of serve-cloud.")
@click.option("--model", default="resnet50", show_default=True)
@click.option("--cache", "--artifacts", "cache", default="artifacts", show_default=True)
@click.option("--backend", default="onnx", show_default=True, type=BACKEND_CHOICE)
@click.option("--device", default="auto", show_default=True, type=DEVICE_CHOICE)
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(1, 1024))
@click.option("--bandwidth", default=None, type=click.FloatRange(0.001, None),
              help="Plan for this bandwidth (Mbit/s) instead of the measured one.")
@click.option("--rtt", default=None, type=click.FloatRange(0, None), help="Plan for this round-trip time (ms).")
@click.option("--objective", default="latency", show_default=True, type=OBJECTIVE_CHOICE)
@click.option("--edge-profile", default=None, help="Use this edge profile (from `profile --out`).")
@click.option("--cloud-profile", default=None, help="Use this cloud profile instead of asking the cloud.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--timeout", default=600.0, show_default=True, type=float)
@click.option("--threads", default=0, type=click.IntRange(0, 256), help="Compute threads for the edge's profile.")
@handle_errors
@client_security()
def plan(cloud, model, cache, backend, device, batch_size, bandwidth, rtt, objective, edge_profile, cloud_profile,
         as_json, timeout, threads, security):
    """Predict the latency of every split from measured profiles and the network, and choose one."""
    from runtime.edge.plan import run_plan
    run_plan(cloud, model, cache, backend, device, batch_size, bandwidth, rtt, objective, edge_profile,
             cloud_profile, as_json, timeout, threads, security=security)


@main.command()
@click.option("--cloud", required=True, help="HOST:PORT of serve-cloud.")
@click.option("--splits", default="0,3,10,16,20,22", show_default=True, help="Comma-separated split points.")
@click.option("--model", default="resnet50", show_default=True)
@click.option("--cache", "--artifacts", "cache", default="artifacts", show_default=True)
@click.option("--backend", default="onnx", show_default=True, type=BACKEND_CHOICE)
@click.option("--device", default="auto", show_default=True, type=DEVICE_CHOICE)
@click.option("--dataset", default="cifar100", show_default=True)
@click.option("--data-dir", default="data", show_default=True)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, None))
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(1, None))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(0, None))
@click.option("--csv", "csv_path", default=None, help="Write the table as CSV here.")
@click.option("--png", "png_path", default=None, help="Write the chart (stacked bars + predictions) here.")
@click.option("--bandwidth", default=None, type=click.FloatRange(0.001, None), help="Predict for this Mbit/s.")
@click.option("--rtt", default=None, type=click.FloatRange(0, None), help="Predict for this round trip (ms).")
@click.option("--timeout", default=600.0, show_default=True, type=float)
@click.option("--threads", default=0, type=click.IntRange(0, 256), help="Compute threads for the head.")
@handle_errors
@client_security()
def sweep(cloud, splits, model, cache, backend, device, dataset, data_dir, limit, batch_size, seed, warmup, csv_path,
          png_path, bandwidth, rtt, timeout, threads, security):
    """Measure every split in --splits on the same samples: the seed's table, a CSV and a chart."""
    from runtime.edge.sweep import run_sweep
    points = _split_values(splits, int, "0,3,10,16,20,22", None)
    run_sweep(cloud, list(points), model, cache, backend, device, dataset, data_dir, limit, batch_size, seed, warmup,
              csv_path, png_path, bandwidth, rtt, timeout, threads, security=security)


@main.command()
@click.option("--out", required=True, help="Write the profile (JSON) here.")
@click.option("--cloud", default=None, help="Fetch the segments from this serve-cloud.")
@click.option("--segments", "segments_dir", default=None, help="...or profile this local segments bundle.")
@click.option("--model", default="resnet50", show_default=True)
@click.option("--cache", "--artifacts", "cache", default="artifacts", show_default=True)
@click.option("--backend", default="onnx", show_default=True, type=BACKEND_CHOICE)
@click.option("--device", default="auto", show_default=True, type=DEVICE_CHOICE)
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(1, 1024))
@click.option("--timeout", default=600.0, show_default=True, type=float)
@click.option("--threads", default=0, type=click.IntRange(0, 256), help="Compute threads (0: library default).")
@handle_errors
@client_security()
def profile(out, cloud, segments_dir, model, cache, backend, device, batch_size, timeout, threads, security):
    """Measure this side's latency of every segment of a model; write it as JSON for `plan --edge-profile`."""
    from runtime.edge.plan import run_profile
    run_profile(out, cloud, segments_dir, model, cache, backend, device, batch_size, threads, timeout,
                security=security)


@main.command()
@click.option("--cloud", required=True, help="HOST:PORT of serve-cloud.")
@click.option("--timeout", default=10.0, show_default=True, type=float)
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
@click.option("--activate", is_flag=True, help="Make it the bundle edges of this model use (they switch).")
@click.option("--admin-token", default=None, envvar=ADMIN_TOKEN_ENV, help="The server's admin token [env {}].".format(
    ADMIN_TOKEN_ENV))
@click.option("--timeout", default=120.0, show_default=True, type=float)
@handle_errors
@client_security(token=False)
def push(bundle, cloud, to_dir, activate, admin_token, timeout, security):
    """Deploy a bundle: upload it to the cloud (--cloud) or copy it (--to), verified."""
    from runtime.edge.deploy import copy_bundle, push_to_cloud
    if bool(cloud) == bool(to_dir):
        raise click.UsageError("give exactly one of --cloud HOST:PORT or --to DIR")
    if to_dir:
        click.echo("copied to {}".format(copy_bundle(bundle, to_dir)))
        return
    done = push_to_cloud(bundle, cloud, admin_token, activate, timeout, security=security)
    click.echo("pushed {} to {}{}{}".format(done["bundle_id"], cloud, "" if done.get("uploaded") else
                                            " (already there, nothing uploaded)",
                                            ", active" if done.get("activated") else ""))


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
