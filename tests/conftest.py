import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))

# the seed's report: its four lines, as the seed printed them (accuracy captured)
SEED_REPORT = re.compile(r"Accuracy: (\d+\.\d\d)%\nAvg edge inference latency: \d+\.\d{3} ms\n"
                         r"Avg transmission latency: \d+\.\d{3} ms\nAvg cloud inference latency: \d+\.\d{3} ms\n")


def assert_seed_report_first(stdout, accuracy="100.00"):
    """The seed's four report lines open ``stdout``, with this accuracy."""
    match = SEED_REPORT.match(stdout)
    assert match, stdout
    assert match.group(1) == accuracy, stdout


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run `python cli.py ARGS` as a real subprocess; return the CompletedProcess (text)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([REPO, os.path.join(REPO, "tests", "fixtures")])
    full_env.update(env or {})
    return subprocess.run([sys.executable, os.path.join(REPO, "cli.py")] + [str(a) for a in args],
                          cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def seed_weights(tmp_path_factory):
    """A weights file in the seed's layout, made by the tests' own independent code."""
    import torch
    from seed_reference import make_state_dict
    path = tmp_path_factory.mktemp("weights") / "resnet50-best.pth"
    torch.save(make_state_dict(seed=1234), str(path))
    return str(path)


SEED_SPLITS = list(range(23))


@pytest.fixture(scope="session")
def seed_bundles(tmp_path_factory, seed_weights):
    """Bundles of the seed's ResNet-50 at every split point, exported once from ``seed_weights``."""
    from exporter.bundle import export_bundle
    from exporter.options import ExportOptions
    root = tmp_path_factory.mktemp("seed-artifacts")
    manifests = {}
    for split in SEED_SPLITS:
        _, manifests[split] = export_bundle("resnet50", str(split), ExportOptions(weights=seed_weights, out_dir=str(root)))
    return root, manifests


@pytest.fixture(scope="session")
def seed_segments(seed_bundles, seed_weights):
    """The seed model's profiling segments, beside its split bundles."""
    from exporter.options import ExportOptions
    from exporter.segments import export_segments
    export_segments("resnet50", ExportOptions(weights=seed_weights, out_dir=str(seed_bundles[0])))
    return seed_bundles[0]


@pytest.fixture(scope="session")
def labelled_npz(tmp_path_factory, seed_weights):
    """500 raw images labelled by the tests' independent copy of the model: a correct run scores 100%."""
    import numpy as np
    import torch
    from seed_reference import forward

    from exporter.models.configs import CIFAR100_MEAN, CIFAR100_STD
    from runtime.edge.data import preprocess_batch
    rng = np.random.RandomState(11)
    x = rng.randint(0, 256, size=(560, 32, 32, 3)).astype(np.uint8)
    pp = {"scale": 1 / 255.0, "mean": list(CIFAR100_MEAN), "std": list(CIFAR100_STD)}
    with torch.no_grad():
        logits = forward(torch.load(seed_weights), torch.from_numpy(preprocess_batch(x, pp))).numpy()
    return _save_labelled(tmp_path_factory.mktemp("data"), x, logits)


def _save_labelled(directory, x, logits, n=500):
    """The first ``n`` images whose top-1 is clear, with their labels, saved as ``directory/labelled.npz``."""
    import numpy as np
    top2 = np.sort(logits, axis=1)[:, -2:]
    # drop near-ties, so every label is unambiguous: a margin within export's tolerance (1e-3 of the largest
    # logit, ~20x the ONNX rounding of these trained-scale weights) could flip in a correct bundle
    clear = (top2[:, 1] - top2[:, 0]) > 1e-3 * np.abs(logits).max()
    x, labels = x[clear][:n], logits.argmax(1)[clear][:n]
    assert len(x) == n
    path = directory / "labelled.npz"
    np.savez(str(path), x=x, y=labels)
    return str(path), labels


TINY = "tiny_models:classifier"  # tests/fixtures/tiny_models.py: a conv net with a skip, 3x16x16 in, 10 classes out
TINY_ID = "tiny_models-classifier"
TINY_SPLITS = list(range(8))  # `cli.py layers --model tiny_models:classifier`: 0 (all on the cloud) .. 7 (on the edge)


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory):
    """The tiny model at every split point, ONNX and TorchScript, with its profiling segments: the store for tests
    where ResNet-50 is not the point (serving, faults, security, deploy), in a second where ResNet-50 takes minutes."""
    from exporter.bundle import export_bundle
    from exporter.options import ExportOptions
    from exporter.segments import export_segments
    root = tmp_path_factory.mktemp("tiny-artifacts")
    for split in TINY_SPLITS:
        export_bundle(TINY, str(split), ExportOptions(random_init=True, out_dir=str(root)))
    export_segments(TINY, ExportOptions(random_init=True, out_dir=str(root)))
    return root


def tiny_bundle(root, split):
    return root / "{}-s{}".format(TINY_ID, split)


@pytest.fixture(scope="session")
def tiny_labelled_npz(tmp_path_factory):
    """500 raw 16x16 images labelled by the tiny model run in torch here (not by the exporter): a correct split
    run scores 100%, and the labels spread over all ten classes.  Near-ties (a margin within 1e-3 of the largest
    logit) are left out, as in labelled_npz."""
    import numpy as np
    import torch
    from tiny_models import classifier

    from runtime.edge.data import preprocess_batch
    rng = np.random.RandomState(12)
    x = rng.randint(0, 256, size=(700, 16, 16, 3)).astype(np.uint8)
    with torch.no_grad():
        pp = {"scale": 1 / 255.0, "mean": list(classifier.mean), "std": list(classifier.std)}
        logits = classifier()(torch.from_numpy(preprocess_batch(x, pp))).numpy()
    path, labels = _save_labelled(tmp_path_factory.mktemp("tiny-data"), x, logits)
    assert len(set(labels.tolist())) == 10
    return path, labels
