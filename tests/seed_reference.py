"""An independent description of the seed's ResNet-50, written from ../shared/FACTS.md section 2.

It shares no code with exporter/: the key list, the shapes and a functional forward
pass are derived here from the facts alone, so the tests can check that the
project's model loads the seed's layout and computes the same thing.
"""
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


def make_state_dict(seed=0):
    """Random but well-scaled values (He-normal convs, BN near identity) so logits are trained-like in size."""
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, shape in seed_keys():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean"):
            state[key] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif key == "fc.weight":
            state[key] = torch.randn(shape, generator=g) * (1.0 / shape[1]) ** 0.5
        elif key.endswith(".weight"):  # batch-norm gamma
            state[key] = 0.5 + 0.5 * torch.rand(shape, generator=g)
        else:  # batch-norm beta, fc bias
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


def _bn_apply(x, s, p):
    return F.batch_norm(x, s[p + ".running_mean"], s[p + ".running_var"], s[p + ".weight"], s[p + ".bias"],
                        training=False, eps=1e-5)


def forward(state, x):
    """The seed's forward pass written with torch.nn.functional over the state_dict."""
    s = state
    x = F.relu(_bn_apply(F.conv2d(x, s["conv1.0.weight"], padding=1), s, "conv1.1"))
    for stage, _, count, stride in STAGES:
        for b in range(count):
            p = "{}.{}".format(stage, b)
            st = stride if b == 0 else 1
            r = F.relu(_bn_apply(F.conv2d(x, s[p + ".residual_function.0.weight"]), s, p + ".residual_function.1"))
            r = F.relu(_bn_apply(F.conv2d(r, s[p + ".residual_function.3.weight"], stride=st, padding=1), s,
                                 p + ".residual_function.4"))
            r = _bn_apply(F.conv2d(r, s[p + ".residual_function.6.weight"]), s, p + ".residual_function.7")
            if p + ".shortcut.0.weight" in s:
                sc = _bn_apply(F.conv2d(x, s[p + ".shortcut.0.weight"], stride=st), s, p + ".shortcut.1")
            else:
                sc = x
            x = F.relu(r + sc)
    x = F.adaptive_avg_pool2d(x, 1).view(x.shape[0], -1)
    return F.linear(x, s["fc.weight"], s["fc.bias"])
