"""What the exporter's commands print: the split-point table and the export summary (rich)."""
import sys

from rich.console import Console
from rich.table import Table

from runtime.bundle import schema


def make_console() -> Console:
    """A console for stdout; wide enough not to wrap tables and hashes when piped to a file."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return "{:.0f} {}".format(n, unit) if unit == "B" else "{:.1f} {}".format(n, unit)
        n /= 1024.0
    return str(n)


def _count(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return "{:.2f}{}".format(n / scale, unit)
    return str(n)


def print_points(config, points, highlight=None, console=None) -> None:
    console = console or make_console()
    table = Table(title="{}: split points for input {}".format(config.model_id, "x".join(map(str, config.input_shape))))
    for col in ("split", "after", "output of", "boundary shape", "bytes/sample (fp32)", "head params", "head FLOPs"):
        table.add_column(col, justify="left" if col in ("after", "output of", "boundary shape") else "right")
    last = max(p["index"] for p in points if isinstance(p["index"], int))
    for p in points:
        name = p["name"]
        if p["index"] == 0:
            name = "input (all on cloud)"
        elif p["index"] == last:
            name = "{} (all on edge)".format(name)
        if p.get("tensors"):  # a cut where several tensors cross: each of them, the bytes of all
            table.add_row(str(p["index"]), name, "{} tensors".format(len(p["tensors"])),
                          " + ".join("x".join(map(str, t["shape"])) for t in p["tensors"]),
                          _size(p["bytes_per_sample"]), _count(p["head_params"]), _count(p["head_flops"]),
                          style="dim")
            continue
        table.add_row(str(p["index"]), name, p.get("of", ""), "x".join(map(str, p["shape"])), _size(p["bytes_per_sample"]),
                      _count(p["head_params"]), _count(p["head_flops"]),
                      style="bold" if p["index"] == highlight else None)
    console.print(table)


def print_export(path: str, manifest: dict, console=None) -> None:
    console = console or make_console()
    split = manifest["split"]
    weights = manifest["model"]["weights"]
    console.print("bundle {} -> {}".format(manifest["bundle_id"], path))
    crossing = schema.tensors(manifest["boundary"])
    console.print("  model {} split {} ({}), boundary {}{} ({} bytes/sample)".format(
        manifest["model"]["id"], schema.split_id(manifest), split["name"],
        "{} tensors ".format(len(crossing)) if len(crossing) > 1 else "",
        " + ".join("x".join(map(str, t["shape"][1:])) for t in crossing), manifest["boundary"]["bytes_per_sample"]))
    if weights["random_init"]:
        console.print("  weights: RANDOM INIT (seed {}): predictions are at chance level".format(
            weights["random_seed"]), style="bold yellow")
    else:
        console.print("  weights: {} (sha256 {})".format(weights["path"], weights["sha256"]))
    for part in ("head", "tail"):
        entry = manifest["parts"][part]
        if entry is None:
            console.print("  {}: none (split {} puts the whole model on the {})".format(
                part, schema.split_id(manifest), "cloud" if part == "head" else "edge"))
            continue
        for fmt, f in sorted(entry["files"].items()):
            extra = " opset {} IR {}".format(f["opset"], f["ir_version"]) if fmt == "onnx" else ""
            console.print("  {} {:<11} {:<9} {:>10}  sha256 {}...{}".format(
                part, fmt, f["file"], _size(f["bytes"]), f["sha256"][:16], extra))
    print_verification(manifest["verification"], console)


def worst_by_format(results) -> dict:
    """{format: (max abs diff, max rel diff)} over a verification's results."""
    worst = {}
    for r in results:
        abs_, rel = worst.get(r["format"], (0.0, 0.0))
        worst[r["format"]] = (max(abs_, r["max_abs_diff"] or 0.0), max(rel, r.get("max_rel_diff") or 0.0))
    return worst


def verification_summary(ver: dict) -> str:
    """'onnx max |diff| 3.7e-04 (rel 3.4e-05), ...' for one verification record (rel: of max |reference|)."""
    return ", ".join("{} max |diff| {:.2e} (rel {:.1e})".format(fmt, a, r)
                     for fmt, (a, r) in sorted(worst_by_format(ver["results"]).items()))


def print_verification(ver: dict, console) -> None:
    """The verification line, and one warning line when the reference could not tell right from wrong."""
    console.print("  verified against the unsplit model (batches {}; |diff| <= {} + {} x max|ref|; top-1): {}".format(
        ",".join(map(str, ver["batch_sizes"])), ver["atol"], ver["rtol"], verification_summary(ver)), soft_wrap=True)
    detections = [r for r in ver["results"] if r["tensor"] == "detections"]
    if detections:
        console.print("  detections (box level, against the whole detector): {} of {} matched, boxes within {:.2e} "
                      "px, scores within {:.2e}".format(
                          sum(r["detections_matched"] for r in detections),
                          sum(r["detections_checked"] for r in detections),
                          max(r["max_abs_diff"] or 0.0 for r in detections),
                          max(r["max_score_diff"] or 0.0 for r in detections)), soft_wrap=True)
    if ver.get("meaningful") is False:
        console.print("  verification NOT MEANINGFUL: {}".format(ver["reason"]), style="bold yellow", soft_wrap=True)
