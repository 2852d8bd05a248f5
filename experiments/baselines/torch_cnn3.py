"""Baseline: cnn3 trained with PyTorch eager on the CPU (2 threads).

A standalone script for its own environment (see README.md); never imported by jaxcnn or its
tests. Run by ``python -m experiments.bench train --baselines`` or by hand:

    /root/venv-baselines/bin/python experiments/baselines/torch_cnn3.py --batch-size 128

Model: the cnn3 of ``jaxcnn.models`` -- for (filters, dropout) in (32, .2), (64, .3), (128, .4):
Conv3x3 same -> BatchNorm -> ReLU -> Conv3x3 same -> BatchNorm -> ReLU -> MaxPool 2x2 -> Dropout;
Flatten -> Dense 128 -> ReLU -> Dropout .5 -> Dense 10: 551,466 parameters (checked).
BatchNorm with PyTorch's defaults (momentum 0.1 = running 0.9, eps 1e-5, as jaxcnn). SGD with
Nesterov momentum 0.9 (lr 0.05), cross-entropy; ``torch.set_num_threads(--threads)``, 2 by
default.

Data: random uint8 CIFAR-shaped batches in memory (a pool of ``--pool`` batches, cycled); each
step converts its uint8 batch to float and normalises it per channel (as jaxcnn's train step
does). With ``--augment``, a random horizontal flip and a 4-pixel reflect-pad random crop per
image, batched with tensor ops, run first; off by default.

Memory formats: ``--memory-format both`` (default) builds two identical models, contiguous
(NCHW) and channels_last (NHWC), times their windows round-robin and reports the faster one
(``memory_format`` says which; ``by_memory_format`` has both).

Protocol: ``--warmup`` untimed steps, then ``--repeats`` timed windows of ``--steps`` steps each
(eager CPU execution is synchronous, so a window ends when its last step returns); the median
of the windows' images/s is reported. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CNN3_PARAMS = 551_466


def build_cnn3(num_classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = []
    c_in = 3
    for filters, rate in ((32, 0.2), (64, 0.3), (128, 0.4)):
        for _ in range(2):
            layers += [nn.Conv2d(c_in, filters, 3, padding=1), nn.BatchNorm2d(filters),
                       nn.ReLU(inplace=True)]
            c_in = filters
        layers += [nn.MaxPool2d(2), nn.Dropout(rate)]
    layers += [nn.Flatten(), nn.Linear(128 * 4 * 4, 128), nn.ReLU(inplace=True),
               nn.Dropout(0.5), nn.Linear(128, num_classes)]
    return nn.Sequential(*layers)


def augment(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random horizontal flip and reflect-pad random crop, per image, on a float NCHW batch."""
    n, _, h, w = x.shape
    flip = torch.rand(n) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    x = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,))
    dx = torch.randint(0, 2 * pad + 1, (n,))
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    batch = torch.arange(n)[:, None, None, None]
    chans = torch.arange(x.shape[1])[None, :, None, None]
    return x[batch, chans, rows, cols]


class Trainer:
    """One model + optimizer in one memory format; ``window(steps)`` returns seconds."""

    def __init__(self, memory_format: str, batches, use_augment: bool, seed: int):
        torch.manual_seed(seed)
        self.fmt = torch.channels_last if memory_format == "channels_last" else (
            torch.contiguous_format)
        self.model = build_cnn3().to(memory_format=self.fmt).train()
        self.params = sum(p.numel() for p in self.model.parameters())
        if self.params != CNN3_PARAMS:
            raise SystemExit(f"cnn3 has {self.params} parameters, expected {CNN3_PARAMS}")
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9,
                                   nesterov=True)
        self.loss_fn = nn.CrossEntropyLoss()
        self.batches = batches
        self.augment = use_augment
        self.mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1) * 255.0
        self.i = 0

    def step(self) -> float:
        images, labels = self.batches[self.i % len(self.batches)]
        self.i += 1
        x = (images.float() - self.mean) / self.std
        if self.augment:
            x = augment(x)
        x = x.contiguous(memory_format=self.fmt)
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), labels)
        loss.backward()
        self.opt.step()
        return loss

    def window(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = self.step()
        loss.item()
        return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="train steps per timed window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--memory-format", choices=("contiguous", "channels_last", "both"),
                   default="both", help="'both' times the two and reports the faster")
    p.add_argument("--augment", action="store_true", help="random flip + pad-and-crop")
    p.add_argument("--pool", type=int, default=10, help="distinct random batches in memory")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    batches = [
        (torch.randint(0, 256, (args.batch_size, 3, 32, 32), dtype=torch.uint8, generator=g),
         torch.randint(0, 10, (args.batch_size,), generator=g))
        for _ in range(args.pool)
    ]
    formats = (["contiguous", "channels_last"] if args.memory_format == "both"
               else [args.memory_format])
    trainers = {f: Trainer(f, batches, args.augment, args.seed) for f in formats}
    for t in trainers.values():
        t.window(args.warmup)
    times: dict[str, list[float]] = {f: [] for f in formats}
    for _ in range(args.repeats):
        for f, t in trainers.items():
            times[f].append(t.window(args.steps))
    rates = {f: [args.steps * args.batch_size / s for s in v] for f, v in times.items()}
    medians = {f: statistics.median(v) for f, v in rates.items()}
    best = max(medians, key=medians.get)
    print(json.dumps({
        "framework": "torch",
        "version": f"torch {torch.__version__}",
        "train_images_per_s": medians[best],
        "memory_format": best,
        "by_memory_format": medians,
        "windows_images_per_s": rates,
        "note": f"eager, {args.threads} threads, {best} (faster of {', '.join(formats)})",
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "augment": args.augment,
        "params": trainers[best].params,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "protocol": "warm-up steps, then median of repeats windows of steps steps, round-robin "
                    "over memory formats",
    }))


if __name__ == "__main__":
    main()
