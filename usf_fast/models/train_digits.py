"""Train the embedded digits networks (the UNet and the feature network) from scratch.

    python -m usf_fast.models.train_digits --out usf_fast/weights        # the shipped weights

Deterministic: fixed seeds, `torch.use_deterministic_algorithms(True)` and a fixed thread count
(`--threads`, default 2). With the same torch version and thread count the weights come out
byte-identical; elsewhere they differ by float rounding only. Data: scikit-learn's bundled digits,
all 1,797 images (the model is a generator; there is no test split to protect).

UNet: ε-prediction on VP linear (β 0.1 → 20), t ~ U(t_min, 1), Adam with warm-up and cosine decay,
EMA of the weights (what ships); the flow UNet the same with the rectified-flow objective (target
v = ε − x0 at x_t = (1 − t)·x0 + t·ε, t ~ U over `NoiseScheduleFlow`'s range). Feature network: a digit classifier trained with noise and shift
augmentation so its features stay meaningful on imperfect samples.
"""
from __future__ import annotations

import argparse
import math
import os
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from ..files import atomic_write
from ..noise_schedules import NoiseScheduleFlow, NoiseScheduleVP
from .digits import FEATURES_FILE, FLOW_UNET_FILE, UNET_FILE, FeatureNet, TinyUNet, digits_data

__all__ = ["train_unet", "train_features", "main"]


def _setup(seed: int, threads: int) -> torch.Generator:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    return torch.Generator().manual_seed(seed)


def _lr(step: int, steps: int, peak: float, warmup: int = 200) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_unet(steps: int = 8000, batch: int = 128, lr: float = 2e-3, ema: float = 0.999, seed: int = 0,
               threads: int = 2, ch: int = 32, progress: bool = True, objective: str = "eps") -> dict:
    """Train the digits UNet; returns the checkpoint dict (EMA weights) that `load_digits_unet` reads.

    objective: "eps" (ε-prediction on VP linear, the `digits` model) or "flow" (the rectified-flow
    velocity ε − x0 on `NoiseScheduleFlow`, the `digits-flow` model)."""
    if objective not in ("eps", "flow"):
        raise ValueError(f"objective={objective!r}: must be 'eps' or 'flow'")
    g = _setup(seed, threads)
    data, _ = digits_data()
    ns = NoiseScheduleVP("linear") if objective == "eps" else NoiseScheduleFlow()
    net = TinyUNet(ch=ch)
    avg = {k: v.detach().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    bar = tqdm(range(steps), desc=f"digits UNet ({objective})", disable=not progress, mininterval=2)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr)
        x0 = data[torch.randint(0, data.shape[0], (batch,), generator=g)]
        t = ns.t_min + (ns.t_max - ns.t_min) * torch.rand(batch, generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = ns.marginal_alpha(t.double()).float()[:, None, None, None]
        s = ns.marginal_std(t.double()).float()[:, None, None, None]
        target = eps if objective == "eps" else eps - x0
        loss = (net(a * x0 + s * eps, t) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for k, v in net.state_dict().items():
                if v.is_floating_point():
                    avg[k].mul_(ema).add_(v, alpha=1 - ema)
                else:
                    avg[k].copy_(v)
        losses.append(loss.item())
        if step % 200 == 0:
            bar.set_postfix(loss=f"{sum(losses[-200:]) / len(losses[-200:]):.4f}")
    return {"config": {"ch": ch}, "state_dict": avg,
            "meta": {"steps": steps, "batch": batch, "lr": lr, "ema": ema, "seed": seed, "threads": threads,
                     "objective": objective, "final_loss": sum(losses[-500:]) / len(losses[-500:]), "torch": str(torch.__version__)}}


def train_features(steps: int = 3000, batch: int = 128, lr: float = 2e-3, seed: int = 0, threads: int = 2,
                   progress: bool = True) -> dict:
    """Train the digits feature network (a classifier); returns its checkpoint dict."""
    g = _setup(seed, threads)
    data, labels = digits_data()
    net = FeatureNet()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for step in tqdm(range(steps), desc="digits features", disable=not progress, mininterval=2):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr)
        idx = torch.randint(0, data.shape[0], (batch,), generator=g)
        x = data[idx]
        # augmentation: one-pixel shifts and Gaussian noise of random strength
        shift = torch.randint(-1, 2, (2,), generator=g)
        x = torch.roll(x, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
        x = x + 0.3 * torch.rand(batch, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
        loss = nn.functional.cross_entropy(net(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(data).argmax(1) == labels).float().mean())
    return {"config": {}, "state_dict": net.state_dict(),
            "meta": {"steps": steps, "batch": batch, "lr": lr, "seed": seed, "threads": threads,
                     "train_accuracy": acc, "torch": str(torch.__version__)}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m usf_fast.models.train_digits", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="usf_fast/weights",
                   help="folder for digits_unet.pt, digits_flow_unet.pt and digits_features.pt")
    p.add_argument("--unet-steps", type=int, default=8000)
    p.add_argument("--feature-steps", type=int, default=3000)
    p.add_argument("--flow-steps", type=int, default=8000, help="steps of the flow UNet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=("unet", "unet-flow", "features"), help="train one of the three")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.only in (None, "features"):
        t0 = time.time()
        ckpt = train_features(args.feature_steps, seed=args.seed, threads=args.threads)
        atomic_write(os.path.join(args.out, FEATURES_FILE), lambda f, c=ckpt: torch.save(c, f))
        print(f"feature network: train accuracy {ckpt['meta']['train_accuracy']:.4f} ({time.time() - t0:.0f} s)")
    if args.only in (None, "unet"):
        t0 = time.time()
        ckpt = train_unet(args.unet_steps, seed=args.seed, threads=args.threads)
        atomic_write(os.path.join(args.out, UNET_FILE), lambda f, c=ckpt: torch.save(c, f))
        print(f"UNet: final loss {ckpt['meta']['final_loss']:.4f} ({time.time() - t0:.0f} s)")
    if args.only in (None, "unet-flow"):
        t0 = time.time()
        ckpt = train_unet(args.flow_steps, seed=args.seed, threads=args.threads, objective="flow")
        atomic_write(os.path.join(args.out, FLOW_UNET_FILE), lambda f, c=ckpt: torch.save(c, f))
        print(f"flow UNet: final loss {ckpt['meta']['final_loss']:.4f} ({time.time() - t0:.0f} s)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
