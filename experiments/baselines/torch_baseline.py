"""Baseline: cnn3 or resnet20 trained and evaluated with PyTorch eager on the CPU (2 threads).

A standalone script for its own environment (see README.md); never imported by jaxcnn or its
tests. Run by ``python -m experiments.bench train --baselines`` or by hand:

    /root/venv-baselines/bin/python experiments/baselines/torch_baseline.py --model cnn3

Models (``--model``), the same architectures as ``jaxcnn.models.create(name)``, their trainable
parameter counts checked at start:

``cnn3`` (551,466 parameters): for (filters, dropout) in (32, .2), (64, .3), (128, .4):
Conv3x3 same -> BatchNorm -> ReLU -> Conv3x3 same -> BatchNorm -> ReLU -> MaxPool 2x2 -> Dropout;
Flatten -> Dense 128 -> ReLU -> Dropout .5 -> Dense 10.

``resnet20`` (269,722 parameters): He et al.'s CIFAR ResNet-20 -- Conv3x3 16 (no bias) -> BN ->
ReLU, three stages of 3 basic blocks with 16/32/64 channels (the first block of stages 2 and 3
has stride 2; every 3x3 conv pads 1 and has no bias), global average pool, Dense 10. Basic block:
ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x)), shortcut option A (identity; where the shape
changes, subsample by 2 and zero-pad the new channels: no parameters). He-normal (fan_out)
kernels, as jaxcnn.

BatchNorm with PyTorch's defaults (momentum 0.1 = running 0.9, eps 1e-5, as jaxcnn). SGD with
Nesterov momentum 0.9 (lr 0.05), cross-entropy; ``torch.set_num_threads(--threads)``, 2 by
default.

Data: random uint8 CIFAR-shaped batches in memory (a pool of ``--pool`` batches, cycled); each
step converts its uint8 batch to float and normalises it per channel (as jaxcnn's train and
eval steps do). With ``--augment``, a random horizontal flip and a 4-pixel reflect-pad random
crop per image, batched with tensor ops, run first in training; off by default.

Eval (inference): ``model.eval()`` under ``torch.inference_mode()``: normalise, forward, summed
cross-entropy and correct predictions (what jaxcnn's eval step computes), same batch size.

Memory formats: ``--memory-format both`` (default) builds two identical models, contiguous
(NCHW) and channels_last (NHWC), times their windows round-robin and reports the faster one,
for train and for eval separately (``memory_format`` / ``eval_memory_format`` say which;
``by_memory_format`` / ``eval_by_memory_format`` have both).

Protocol: ``--warmup`` untimed train and eval steps per model, then ``--repeats`` rounds; each
round runs, for every memory format, a window of ``--steps`` train steps and one of ``--steps``
eval steps (eager CPU execution is synchronous, so a window ends when its last step returns);
the medians of the windows' images/s are reported, with the process's peak resident set size
(``peak_rss_mb``: ``VmHWM`` of ``/proc/self/status``, not ``ru_maxrss``, which Linux carries
over from the parent across ``execve``; both models included under ``both``). Prints one JSON
line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from peak_rss import add_common_options, peak_rss_mb  # this folder: the script's sys.path[0]
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
PARAMS = {"cnn3": 551_466, "resnet20": 269_722}


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


class BasicBlock(nn.Module):
    """Post-activation basic block with the option-A shortcut (subsample + zero channels)."""

    def __init__(self, c_in: int, features: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, features, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(features)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(features)
        self.stride, self.extra = stride, features - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x
        if self.stride > 1:
            shortcut = shortcut[:, :, ::self.stride, ::self.stride]
        if self.extra:
            shortcut = nn.functional.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
        return torch.relu(y + shortcut)


class ResNet20(nn.Module):
    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64),
                 blocks_per_stage: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks, c_in = [], widths[0]
        for s, width in enumerate(widths):
            for b in range(blocks_per_stage):
                blocks.append(BasicBlock(c_in, width, 2 if (s > 0 and b == 0) else 1))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


BUILDERS = {"cnn3": build_cnn3, "resnet20": ResNet20}


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
    """One model + optimizer in one memory format; ``window``/``eval_window`` return seconds."""

    def __init__(self, model_name: str, memory_format: str, batches, use_augment: bool,
                 seed: int):
        torch.manual_seed(seed)
        self.fmt = torch.channels_last if memory_format == "channels_last" else (
            torch.contiguous_format)
        self.model = BUILDERS[model_name]().to(memory_format=self.fmt).train()
        self.params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        if self.params != PARAMS[model_name]:
            raise SystemExit(f"{model_name} has {self.params} trainable parameters, expected "
                             f"{PARAMS[model_name]}")
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9,
                                   nesterov=True)
        self.loss_fn = nn.CrossEntropyLoss()
        self.batches = batches
        self.augment = use_augment
        self.mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1) * 255.0
        self.i = 0

    def _next(self):
        images, labels = self.batches[self.i % len(self.batches)]
        self.i += 1
        return (images.float() - self.mean) / self.std, labels

    def step(self) -> torch.Tensor:
        x, labels = self._next()
        if self.augment:
            x = augment(x)
        x = x.contiguous(memory_format=self.fmt)
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), labels)
        loss.backward()
        self.opt.step()
        return loss

    def window(self, steps: int) -> float:
        self.model.train()
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = self.step()
        loss.item()
        return time.perf_counter() - t0

    def eval_window(self, steps: int) -> float:
        """``steps`` inference steps: forward, summed loss and correct predictions."""
        self.model.eval()
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(steps):
                x, labels = self._next()
                logits = self.model(x.contiguous(memory_format=self.fmt))
                loss_sum = nn.functional.cross_entropy(logits, labels, reduction="sum")
                correct = (logits.argmax(-1) == labels).sum()
            loss_sum.item(), correct.item()
        elapsed = time.perf_counter() - t0
        self.model.train()
        return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_options(p, tuple(PARAMS))
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed train and eval steps per model first")
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
    trainers = {f: Trainer(args.model, f, batches, args.augment, args.seed) for f in formats}
    for t in trainers.values():
        t.window(args.warmup)
        t.eval_window(args.warmup)
    times: dict[str, list[float]] = {f: [] for f in formats}
    eval_times: dict[str, list[float]] = {f: [] for f in formats}
    for _ in range(args.repeats):
        for f, t in trainers.items():
            times[f].append(t.window(args.steps))
            eval_times[f].append(t.eval_window(args.steps))
    images = args.steps * args.batch_size
    rates = {f: [images / s for s in v] for f, v in times.items()}
    eval_rates = {f: [images / s for s in v] for f, v in eval_times.items()}
    medians = {f: statistics.median(v) for f, v in rates.items()}
    eval_medians = {f: statistics.median(v) for f, v in eval_rates.items()}
    best = max(medians, key=medians.get)
    eval_best = max(eval_medians, key=eval_medians.get)
    print(json.dumps({
        "framework": "torch",
        "model": args.model,
        "version": f"torch {torch.__version__}",
        "train_images_per_s": medians[best],
        "eval_images_per_s": eval_medians[eval_best],
        "peak_rss_mb": peak_rss_mb(),
        "memory_format": best,
        "eval_memory_format": eval_best,
        "by_memory_format": medians,
        "eval_by_memory_format": eval_medians,
        "windows_images_per_s": rates,
        "eval_windows_images_per_s": eval_rates,
        "note": f"eager, {args.threads} threads, {best} (faster of {', '.join(formats)}; "
                f"eval: {eval_best})",
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "augment": args.augment,
        "params": trainers[best].params,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "protocol": "warm-up steps, then median of repeats rounds of a train and an eval "
                    "window of steps steps, round-robin over memory formats",
    }))


if __name__ == "__main__":
    main()
