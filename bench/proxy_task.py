"""A procedurally generated 100-class image task, to train the seed's ResNet-50 where CIFAR-100 cannot be had.

Why it exists: with random weights the seed's ResNet-50 gives logits that barely
depend on the input, so the top-2 margin of 1% of samples is below 1e-3 of the
logits' spread, and any lossy activation encoding "flips" them.  That measures the
random model, not the encoding.  A model trained on a learnable task has the margins
trained models have, including real near-ties: each image here blends its class's
pattern with another class's, so some images are genuinely ambiguous.

Each class is a fixed sum of ``COMPONENTS`` 2-D sinusoids (integer frequencies up to
4 cycles per 32 pixels, a phase, an amplitude per colour channel) scaled to unit RMS.
A sample of class c::

    x = (1 - a) * P_c(shift) + a * P_d(shift')       a ~ U(0, 0.6), d != c
    x = x * contrast + brightness + noise             contrast ~ U(0.7, 1.3), brightness ~ N(0, 0.3) per channel,
                                                      noise ~ N(0, 1) per pixel
    image = clip(round(128 + 50 * x), 0, 255)         uint8, like a CIFAR image

with random circular shifts of up to 4 pixels each way.  When a > 0.5 the label is
the weaker of the two patterns: about 1 image in 6 cannot be classified from its
pixels, which holds accuracy near the seed's 77% on CIFAR-100 (a small 3-layer CNN
reaches 80% on the held-out set after 150 s on 2 CPU cores).  The classes are fixed by
``task_seed``; samples by the generator passed in, so a held-out set comes from a
seed training never uses.  Runs on any torch device.
"""
import math

import numpy as np
import torch

CLASSES = 100
COMPONENTS = 6
MAX_FREQ = 4
MAX_SHIFT = 4
SIZE = 32
NOISE = 1.0  # per-pixel noise, against patterns of unit RMS
MAX_MIX = 0.6  # the other class's share: above 0.5 the label is the weaker pattern (ambiguous, as real images are)
HELDOUT_SEED = 20261126  # the held-out set's generator seed; training seeds differ from it


class ProxyTask(object):
    """The class patterns (from ``task_seed``) and a sampler of labelled uint8 images."""

    def __init__(self, task_seed=0, classes=CLASSES, device="cpu"):
        g = torch.Generator().manual_seed(task_seed)
        freq = torch.randint(-MAX_FREQ, MAX_FREQ + 1, (classes, COMPONENTS, 2), generator=g)
        still = (freq == 0).all(dim=2)
        freq[..., 0][still] = 1  # no constant component: every one is a pattern
        amp = torch.randn(classes, COMPONENTS, 3, generator=g)
        # a sinusoid has mean square 1/2: scale each class to unit RMS per pixel, over the channels
        amp = amp / torch.sqrt((amp ** 2).sum(dim=(1, 2), keepdim=True) / 2 / 3)
        self.classes = classes
        self.device = torch.device(device)
        self.freq = freq.float().to(self.device)
        self.phase = (torch.rand(classes, COMPONENTS, generator=g) * 2 * math.pi).to(self.device)
        self.amp = amp.to(self.device)
        self._grid = torch.arange(SIZE, dtype=torch.float32, device=self.device)

    def patterns(self, labels, shifts):
        """Class ``labels[i]``'s pattern shifted by ``shifts[i]`` (dx, dy pixels): float32 (n, 3, 32, 32)."""
        f = self.freq[labels]  # (n, K, 2)
        u = self._grid.view(1, 1, 1, SIZE) + shifts[:, 0].view(-1, 1, 1, 1)  # (n, 1, 1, W)
        v = self._grid.view(1, 1, SIZE, 1) + shifts[:, 1].view(-1, 1, 1, 1)  # (n, 1, H, 1)
        arg = (2 * math.pi / SIZE) * (f[..., 0, None, None] * u + f[..., 1, None, None] * v)
        waves = torch.sin(arg + self.phase[labels][..., None, None])  # (n, K, H, W)
        return torch.einsum("nkhw,nkc->nchw", waves, self.amp[labels])

    def sample(self, n, generator):
        """-> (images uint8 (n, 3, 32, 32) on the task's device, labels int64 (n,)).

        ``generator`` is a ``torch.Generator`` on the task's device.
        """
        dev = self.device

        def uniform(*shape):
            return torch.rand(*shape, generator=generator, device=dev)

        labels = torch.randint(0, self.classes, (n,), generator=generator, device=dev)
        other = (labels + torch.randint(1, self.classes, (n,), generator=generator, device=dev)) % self.classes
        shift = lambda: torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (n, 2), generator=generator, device=dev).float()
        a = (uniform(n) * MAX_MIX).view(n, 1, 1, 1)
        x = (1 - a) * self.patterns(labels, shift()) + a * self.patterns(other, shift())
        x = x * (0.7 + 0.6 * uniform(n, 1, 1, 1))
        x = x + 0.3 * torch.randn(n, 3, 1, 1, generator=generator, device=dev)
        x = x + NOISE * torch.randn(n, 3, SIZE, SIZE, generator=generator, device=dev)
        images = torch.clamp(torch.round(128 + 50 * x), 0, 255).to(torch.uint8)
        return images, labels


def heldout(n=1000, task_seed=0, seed=HELDOUT_SEED):
    """The held-out set, made on the CPU: (uint8 N x 32 x 32 x 3 as CIFAR stores it, int64 labels)."""
    task = ProxyTask(task_seed)
    images, labels = task.sample(n, torch.Generator().manual_seed(seed))
    return images.permute(0, 2, 3, 1).contiguous().numpy(), labels.numpy().astype(np.int64)


def save_heldout(path, n=1000, task_seed=0):
    """Write the held-out set as an ``npz:`` dataset (arrays x, y) for ``run-edge --dataset npz:PATH``."""
    x, y = heldout(n, task_seed)
    np.savez(path, x=x, y=y)
    return path
