"""The README's main command for now: export the seed's ResNet-50 and show where it can be cut."""
from .bundle import describe_points, export_bundle
from .weights import find_default_weights
from .models.configs import resolve
from .report import make_console, print_export, print_points


def run_demo(split: str, weights, out: str) -> None:
    console = make_console()
    config = resolve("resnet50")
    weights = weights or find_default_weights(config.default_weights)
    if weights is None:
        console.print("demo: no {} found, so the model gets RANDOM weights: the bundle is real and verified, "
                      "but its predictions are at chance level".format(config.default_weights), style="bold yellow")
    path, manifest = export_bundle("resnet50", split, weights=weights, random_init=weights is None, out_dir=out)
    _, points = describe_points("resnet50")
    print_points(config, points, highlight=manifest["split"]["index"], console=console)
    print_export(path, manifest, console=console)
