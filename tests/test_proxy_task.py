"""The benchmark's proxy task (bench/proxy_task.py) and its trainer (bench/train_proxy.py)."""
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import proxy_task  # noqa: E402


def test_heldout_set_is_fixed_and_cifar_shaped():
    x, y = proxy_task.heldout(200)
    x2, y2 = proxy_task.heldout(200)
    assert x.shape == (200, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert 0 <= y.min() and y.max() < 100 and len(set(y.tolist())) > 80
    assert 100 < x.mean() < 156 and x.std() > 30  # centred on 128, not saturated


def test_labels_follow_the_class_patterns_with_designed_ambiguity():
    """A shift-invariant nearest-pattern classifier (|FFT| against each class's pattern) reads the labels far above
    chance (1%), but not all of them: above a 0.5 mix the label is the weaker pattern (1 image in 6)."""
    import torch
    x, y = proxy_task.heldout(300)
    task = proxy_task.ProxyTask()
    patterns = task.patterns(torch.arange(100), torch.zeros(100, 2)).numpy()
    p = np.abs(np.fft.fft2(patterns)).reshape(100, -1)
    q = np.abs(np.fft.fft2(x.transpose(0, 3, 1, 2).astype(np.float32) - 128)).reshape(len(x), -1)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    accuracy = float(np.mean((q @ p.T).argmax(axis=1) == y))
    assert 0.6 < accuracy < 0.95, accuracy


def test_trainer_writes_weights_that_export_loads_strictly(tmp_path):
    weights = tmp_path / "proxy.pth"
    held = tmp_path / "held.npz"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "train_proxy.py"), "--minutes", "0.05",
                           "--device", "cpu", "--batch-size", "4", "--lr", "0.01", "--save-dtype", "float16",
                           "--out", str(weights), "--heldout", str(held)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out accuracy" in proc.stdout and "320 keys" in proc.stdout
    with np.load(str(held)) as data:
        np.testing.assert_array_equal(data["x"], proxy_task.heldout()[0])
    out = tmp_path / "store"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "cli.py"), "export", "--split", "20", "--weights",
                           str(weights), "--out", str(out), "--formats", "onnx"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(str(out / "resnet50-s20" / "manifest.json")) as f:
        recorded = json.load(f)["model"]["weights"]
    assert recorded["random_init"] is False
