#!/usr/bin/env python3
"""Train the seed's ResNet-50 on the proxy task (bench/proxy_task.py) for a fixed time; write its weights.

For the benchmark's lossy-compression rows, which need a model whose predictions
depend on its input (random weights give near-ties everywhere; see proxy_task.py)::

    python bench/train_proxy.py --minutes 4.5                   # one H100: 82.2% held-out accuracy
    python bench/speed.py --only compression --weights weights/proxy-resnet50.pth \
        --dataset npz:weights/proxy-heldout.npz

Without a GPU it runs too (``--device cpu``), at about 15 samples/s on 2 cores
against 10,400 on an H100: hours for a comparable model.

It writes ``--out`` (a state_dict with the seed's 320 keys, so ``cli.py export
--weights`` loads it strictly; ``--save-dtype float16`` halves the file) and the
1000-image held-out set as an ``npz:`` dataset, then prints the held-out accuracy and
the top-2 logit margins.  Training samples are drawn fresh every step from a seed the
held-out set never uses.  SGD with Nesterov momentum, a linear warm-up over the first
3% of the time and a cosine decay over the rest, bf16 autocast on CUDA.
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from proxy_task import ProxyTask, heldout  # noqa: E402

from exporter.models.cifar_resnet import resnet50  # noqa: E402
from exporter.models.configs import CIFAR100_MEAN, CIFAR100_STD  # noqa: E402

WARMUP = 0.03


def learning_rate(fraction, peak):
    """Linear warm-up to ``peak`` over the first 3% of the time, then cosine to 0."""
    if fraction < WARMUP:
        return peak * fraction / WARMUP
    return 0.5 * peak * (1 + math.cos(math.pi * min(1.0, (fraction - WARMUP) / (1 - WARMUP))))


class Normalize(nn.Module):
    """uint8 NCHW -> the seed's preprocessing (ToTensor, Normalize), as the runtime does it."""

    def __init__(self, device):
        super().__init__()
        self.mean = torch.tensor(CIFAR100_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(CIFAR100_STD, device=device).view(1, 3, 1, 1)

    def forward(self, images):
        return (images.float() / 255.0 - self.mean) / self.std


def evaluate(model, norm, device, x, y, batch=250):
    """-> (accuracy, top-2 margins) of ``model`` on uint8 NHWC images ``x``."""
    model.eval()
    logits = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            images = torch.from_numpy(x[i:i + batch]).permute(0, 3, 1, 2).to(device)
            logits.append(model(norm(images).contiguous(memory_format=torch.channels_last)).float().cpu())
    logits = torch.cat(logits).numpy()
    top2 = np.sort(logits, axis=1)[:, -2:]
    return float(np.mean(logits.argmax(1) == y)), top2[:, 1] - top2[:, 0], float(logits.std())


def train(model, task, norm, device, seconds, batch, peak_lr, seed):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    gen = torch.Generator(device=device).manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    cuda = device.type == "cuda"
    model.train()
    steps, seen, loss_avg = 0, 0, None
    start = time.perf_counter()
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeRemainingColumn()]
    with Progress(*columns, transient=False) as progress:
        bar = progress.add_task("training", total=seconds)
        while True:
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
            for group in opt.param_groups:
                group["lr"] = learning_rate(elapsed / seconds, peak_lr)
            images, labels = task.sample(batch, gen)
            inputs = norm(images).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = loss_fn(model(inputs).float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            seen += batch
            if steps % 20 == 0 or not cuda:
                value = float(loss.detach())  # a sync: only every 20 steps on a GPU
                loss_avg = value if loss_avg is None else 0.9 * loss_avg + 0.1 * value
                progress.update(bar, completed=min(elapsed, seconds),
                                description="training: step {} loss {:.3f}".format(steps, loss_avg))
        progress.update(bar, completed=seconds)
    if cuda:
        torch.cuda.synchronize()
    return steps, seen, time.perf_counter() - start, loss_avg


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=4.5, help="training time (default 4.5)")
    parser.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default 0.1)")
    parser.add_argument("--seed", type=int, default=1, help="training samples' seed (the held-out set has its own)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--out", default=os.path.join(REPO, "weights", "proxy-resnet50.pth"))
    parser.add_argument("--heldout", default=os.path.join(REPO, "weights", "proxy-heldout.npz"),
                        help="where to write the 1000-image held-out set (an npz: dataset)")
    parser.add_argument("--save-dtype", choices=("float32", "float16"), default="float32")
    args = parser.parse_args()
    if args.minutes <= 0 or args.batch_size < 2:
        sys.exit("train_proxy: --minutes must be > 0 and --batch-size >= 2")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("train_proxy: --device cuda, but torch sees no CUDA device; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)

    x_held, y_held = heldout()
    os.makedirs(os.path.dirname(os.path.abspath(args.heldout)), exist_ok=True)
    np.savez(args.heldout, x=x_held, y=y_held)
    model = resnet50().to(device).to(memory_format=torch.channels_last)
    task = ProxyTask(device=device)
    norm = Normalize(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu, {} threads".format(
        torch.get_num_threads())
    print("train_proxy: {} for {:.1f} min on {}, batch {}, peak lr {}".format(
        "resnet50", args.minutes, name, args.batch_size, args.lr), flush=True)
    steps, seen, took, loss = train(model, task, norm, device, args.minutes * 60, args.batch_size, args.lr,
                                    args.seed)
    accuracy, margins, spread = evaluate(model, norm, device, x_held, y_held)

    state = {k: (v.half() if args.save_dtype == "float16" and v.is_floating_point() else v).detach().cpu()
             for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save(state, args.out)
    p1, p5, p50 = np.percentile(margins, [1, 5, 50])
    print("train_proxy: {} steps, {} samples in {:.0f} s ({:.0f} samples/s), final loss {:.3f}".format(
        steps, seen, took, seen / took, loss if loss is not None else float("nan")))
    print("train_proxy: held-out accuracy {:.1%} on {} images ({})".format(accuracy, len(y_held), args.heldout))
    print("train_proxy: top-2 logit margin p1 {:.4f}, p5 {:.4f}, p50 {:.4f} (logit std {:.4f}; "
          "p1 is {:.2e} of the std)".format(p1, p5, p50, spread, p1 / spread))
    print("train_proxy: wrote {} ({} state_dict, {} keys)".format(args.out, args.save_dtype, len(state)))


if __name__ == "__main__":
    main()
