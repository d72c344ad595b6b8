"""An independent description of the seed's ResNet-50 (weiaicunzai/pytorch-cifar100's layout), written from the
published facts of that model: stem conv1 (3x3, 64) + BN + ReLU, bottleneck stages of 3, 4, 6 and 3 blocks
(widths 64, 128, 256, 512, expansion 4, strides 1, 2, 2, 2), average pool, fc to 100 classes.

It shares no code with exporter/: the key list, the shapes and a functional forward
pass are derived here from the facts alone, so the tests can check that the
project's model loads the seed's layout and computes the same thing.
"""
import functools
from collections import OrderedDict

import torch
from torch.nn import functional as F

STAGES = (("conv2_x", 64, 3, 1), ("conv3_x", 128, 4, 2), ("conv4_x", 256, 6, 2), ("conv5_x", 512, 3, 2))
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix, channels):
    shapes = {"weight": (channels,), "bias": (channels,), "running_mean": (channels,),
              "running_var": (channels,), "num_batches_tracked": ()}
    return [(prefix + "." + s, shapes[s]) for s in BN_SUFFIXES]


def seed_keys():
    """(key, shape) for every state_dict entry, in the seed's order."""
    keys = [("conv1.0.weight", (64, 3, 3, 3))] + _bn("conv1.1", 64)
    in_ch = 64
    for stage, width, count, stride in STAGES:
        for b in range(count):
            p = "{}.{}".format(stage, b)
            out = 4 * width
            keys.append((p + ".residual_function.0.weight", (width, in_ch, 1, 1)))
            keys += _bn(p + ".residual_function.1", width)
            keys.append((p + ".residual_function.3.weight", (width, width, 3, 3)))
            keys += _bn(p + ".residual_function.4", width)
            keys.append((p + ".residual_function.6.weight", (out, width, 1, 1)))
            keys += _bn(p + ".residual_function.7", out)
            if b == 0:
                keys.append((p + ".shortcut.0.weight", (out, in_ch, 1, 1)))
                keys += _bn(p + ".shortcut.1", out)
            in_ch = out
    keys += [("fc.weight", (100, 2048)), ("fc.bias", (100,))]
    return keys


CALIBRATION_BATCH = 32
LOGIT_STD = 4.0  # spread of the calibrated logits across inputs, as in a trained classifier


def _draw(seed):
    """He-normal convs, BN affine near identity, a random classifier; running stats still placeholders."""
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, shape in seed_keys():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.ones(shape)
        elif key.endswith("running_mean"):
            state[key] = torch.zeros(shape)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif key == "fc.weight":
            state[key] = torch.randn(shape, generator=g) * (1.0 / shape[1]) ** 0.5
        elif key.endswith(".weight"):  # batch-norm gamma
            state[key] = 0.6 + 0.8 * torch.rand(shape, generator=g)
        else:  # batch-norm beta, fc bias
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state, g


def calibration_inputs(n, generator):
    """Normalised 32x32 images: half white noise, half smooth random fields (upsampled 4x4 and 8x8 noise)."""
    noise = torch.randn(n - n // 2, 3, 32, 32, generator=generator)
    coarse = [torch.randn(n // 4, 3, r, r, generator=generator) for r in (4, 8)]
    smooth = torch.cat([F.interpolate(c, size=32, mode="bilinear", align_corners=False) for c in coarse]
                       + [torch.randn(n // 2 - 2 * (n // 4), 3, 32, 32, generator=generator)])
    return torch.cat([noise, 1.5 * smooth / smooth.std()])


def make_state_dict(seed=0):
    """Weights with a trained network's activation scale, drawn and calibrated without exporter/ code.

    1. draw He-normal convs, BN gamma in [0.6, 1.4], beta ~ 0.1 N(0, 1), a random fc;
    2. run ``forward`` once over ``calibration_inputs`` with ``calibrate=True``: every
       BN's running_mean/var become the batch statistics of its own input (in forward
       order, so each sees the already calibrated layers before it), as a trained
       network's BN statistics are those of its data: activations then have mean |a|
       about 1 and reach 10-25 deep in the network;
    3. centre and scale the classifier on the same batch: fc.bias cancels the mean
       logit, fc.weight is scaled so logits spread by ``LOGIT_STD`` across inputs, so
       predictions depend on the input instead of one class winning everywhere.
    """
    state, g = _draw(seed)
    x = calibration_inputs(CALIBRATION_BATCH, g)
    with torch.no_grad():
        features = forward(state, x, calibrate=True, features=True)
        logits = F.linear(features, state["fc.weight"])
        scale = LOGIT_STD / logits.std().item()
        state["fc.weight"] = state["fc.weight"] * scale
        state["fc.bias"] = -logits.mean(0) * scale + 0.1 * torch.randn(state["fc.bias"].shape, generator=g)
    return state


def _bn_apply(x, s, p, calibrate=False):
    if calibrate:  # running statistics := those of this batch (biased variance, as BatchNorm's normalisation uses)
        s[p + ".running_mean"] = x.mean((0, 2, 3))
        s[p + ".running_var"] = x.var((0, 2, 3), unbiased=False)
    return F.batch_norm(x, s[p + ".running_mean"], s[p + ".running_var"], s[p + ".weight"], s[p + ".bias"],
                        training=False, eps=1e-5)


def forward(state, x, calibrate=False, features=False):
    """The seed's forward pass written with torch.nn.functional over the state_dict.

    ``calibrate``: set each BN's running statistics from its input first (see make_state_dict);
    ``features``: return the pooled 2048 features instead of the logits.
    """
    s = state
    bn = functools.partial(_bn_apply, calibrate=calibrate)
    x = F.relu(bn(F.conv2d(x, s["conv1.0.weight"], padding=1), s, "conv1.1"))
    for stage, _, count, stride in STAGES:
        for b in range(count):
            p = "{}.{}".format(stage, b)
            st = stride if b == 0 else 1
            r = F.relu(bn(F.conv2d(x, s[p + ".residual_function.0.weight"]), s, p + ".residual_function.1"))
            r = F.relu(bn(F.conv2d(r, s[p + ".residual_function.3.weight"], stride=st, padding=1), s,
                          p + ".residual_function.4"))
            r = bn(F.conv2d(r, s[p + ".residual_function.6.weight"]), s, p + ".residual_function.7")
            if p + ".shortcut.0.weight" in s:
                sc = bn(F.conv2d(x, s[p + ".shortcut.0.weight"], stride=st), s, p + ".shortcut.1")
            else:
                sc = x
            x = F.relu(r + sc)
    x = F.adaptive_avg_pool2d(x, 1).view(x.shape[0], -1)
    if features:
        return x
    return F.linear(x, s["fc.weight"], s["fc.bias"])
