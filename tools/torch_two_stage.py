"""The reference code's two-stage M-SCL protocol in PyTorch, as an independent check of
resp_jax's learning figures (docs/benchmarks.md, "Two-stage methods on small sets").

    python tools/torch_two_stage.py --data_root=DIR [--seed=0] [--epochs=30]
        [--linear_epochs=30] [--linear_lr=1e-3] [--duration=4] [--batch=32]
        [--channels=16,32,64,128] [--fill=min|mean] [--no_specaugment]

It trains on resp_jax's log-mel features of an ICBHI root (the same cycles, fitted to the same
clip length), and does the rest as the M-SCL code does ([mscl] main.py, mscl.py,
augmentations.py, utils.py; docs/method.md §2-5): per batch a min-max over the whole batch, two
views each drawn through SpecAugment (`1 > randn(1)`, then 2 frequency masks < 20 bins and 2
time masks < 40 frames with torchaudio's placement, filled with 0 before the standardisation),
standardised with (0.3690, 0.0255); CNN6 (xavier-initialised convolutions) and two projectors,
0.75 x SupCon(class) + 0.25 x SupCon(sex x age) with temperature 0.06, Adam with L2 1e-4 and
the periodic cosine (T_max 40, stepped per epoch); then a linear classifier on the frozen
encoder in eval mode, features recomputed from shuffled batches every epoch, class-weighted
CE, the test split evaluated every epoch in its prepared order. The last line is JSON: the
last epoch's test Sp, Se, Score and the mean Score of the last 10 epochs.

Cycles with an unknown sex or age take no part in the metadata head (as in resp_jax). Needs
the torch extra. Nothing in the package imports this module.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("resp_jax") is None:  # a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import resp_jax  # noqa: E402,F401
from torch_reference import CNN6, Projector  # noqa: E402

MEAN, STD = 0.3690, 0.0255
HEADS = (("label", 0.75), ("sex+age_group", 0.25))


def load_features(root: str, duration: float, tfds_dir: str | None):
    """(train, test) as (log-mel [n, 64, T] tensors, {field: labels}) from resp_jax's store."""
    import runpy

    from resp_jax import configuration
    from resp_jax.data import run_data

    config = runpy.run_path(str(REPO / "configs" / "mscl.py"))["get_config"]()
    config.data.root, config.data.duration = root, duration
    config.data.tfds_dir = tfds_dir or ""
    data = run_data.load(configuration.resolve(config))
    out = []
    for split in ("train", data.test_split):
        f = data.features[split]
        out.append((torch.tensor(np.asarray(f.x)),
                    {h: torch.tensor(np.asarray(data.features.field(split, h))).long()
                     for h, _ in HEADS}))
    return out


def supcon(z1, z2, labels, tau=0.06):
    """SupCon over the 2N views (all-but-self denominator); rows with label -1 take no part."""
    keep = torch.cat([labels, labels]) >= 0
    z = F.normalize(torch.cat([z1, z2]), dim=1)[keep]
    y = torch.cat([labels, labels])[keep]
    if len(y) < 2:
        return z.sum() * 0.0
    logits = z @ z.T / tau
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = 1.0 - torch.eye(len(y))
    pos = (y[:, None] == y[None, :]).float() * not_self
    log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(1, keepdim=True))
    return -((pos * log_prob).sum(1) / pos.sum(1).clamp(min=1)).mean()


class Views:
    """The reference's transforms on log-mel batches (dB): min-max over the batch,
    SpecAugment (training views), standardisation."""

    def __init__(self, generator, fill: str, specaugment: bool):
        self.g, self.fill, self.specaugment = generator, fill, specaugment

    def _masks(self, x, param, axis):   # torchaudio's mask_along_axis_iid
        size = x.shape[axis]
        value = torch.rand(x.shape[0], generator=self.g) * param
        start = (torch.rand(x.shape[0], generator=self.g) * (size - value)).long()
        end = start + value.long()
        idx = torch.arange(size)
        hit = (idx[None] >= start[:, None]) & (idx[None] < end[:, None])
        return hit[:, :, None] if axis == 1 else hit[:, None, :]

    def train(self, x):
        x = (x - x.min()) / (x.max() - x.min())
        if self.specaugment and 1.0 > torch.randn(1, generator=self.g).item():
            hit = torch.zeros_like(x, dtype=torch.bool)
            for _ in range(2):
                hit |= self._masks(x, 20, 1)
            for _ in range(2):
                hit |= self._masks(x, 40, 2)
            value = 0.0 if self.fill == "min" else x.mean(dim=(1, 2), keepdim=True)
            x = torch.where(hit, value, x)
        return (x - MEAN) / STD

    @staticmethod
    def eval(x):
        return ((x - x.min()) / (x.max() - x.min()) - MEAN) / STD


def score(y, p) -> tuple:
    sp = float((p[y == 0] == 0).float().mean()) * 100
    se = float((p[y > 0] == y[y > 0]).float().mean()) * 100
    return sp, se, (sp + se) / 2


def run(args) -> dict:
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    (x_tr, y_tr), (x_te, y_te) = load_features(args.data_root, args.duration, args.tfds_dir)
    views = Views(g, args.fill, not args.no_specaugment)
    channels = tuple(args.channels)
    encoder = CNN6(channels)
    for m in encoder.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
    projectors = {h: Projector(channels[-1]) for h, _ in HEADS}
    params = list(encoder.parameters()) + [p for m in projectors.values()
                                           for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=40, eta_min=1e-6)
    n = len(x_tr)
    for epoch in range(args.epochs):
        total = 0.0
        for i in torch.randperm(n, generator=g).split(args.batch):
            with torch.no_grad():
                v1, v2 = views.train(x_tr[i]), views.train(x_tr[i])
            f1, f2 = encoder(v1), encoder(v2)
            loss = sum(w * supcon(projectors[h](f1), projectors[h](f2), y_tr[h][i])
                       for h, w in HEADS)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        sched.step()
        print(f"pretrain epoch {epoch + 1}: loss {total / math.ceil(n / args.batch):.4f}",
              flush=True)

    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad = False
    counts = torch.bincount(y_tr["label"], minlength=4).float()
    weights = 1.0 / (counts / counts.sum())
    ce = nn.CrossEntropyLoss(weight=weights / weights.sum())
    classifier = nn.Linear(channels[-1], 4)
    opt = torch.optim.Adam(classifier.parameters(), lr=args.linear_lr, weight_decay=1e-4)
    scores = []
    for epoch in range(args.linear_epochs):
        for i in torch.randperm(n, generator=g).split(args.linear_batch):
            with torch.no_grad():
                f = encoder(views.eval(x_tr[i]))
            loss = ce(classifier(f), y_tr["label"][i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = torch.cat([classifier(encoder(views.eval(x_te[a:a + args.linear_batch])))
                              .argmax(1) for a in range(0, len(x_te), args.linear_batch)])
        scores.append(score(y_te["label"], pred))
        print(f"linear epoch {epoch + 1}: test Sp {scores[-1][0]:.2f} Se {scores[-1][1]:.2f} "
              f"Score {scores[-1][2]:.2f}", flush=True)
    recent = [s[2] for s in scores[-10:]]
    return {"seed": args.seed, "sp": scores[-1][0], "se": scores[-1][1],
            "score": scores[-1][2], "score_recent": float(np.mean(recent)),
            "score_recent_std": float(np.std(recent))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_root", required=True, help="an ICBHI root")
    parser.add_argument("--tfds_dir", default=None, help="resp_jax's prepared-data cache")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--linear_epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--linear_lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--linear_batch", type=int, default=128)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--channels", type=lambda s: [int(c) for c in s.split(",")],
                        default=[16, 32, 64, 128])
    parser.add_argument("--fill", choices=("min", "mean"), default="min")
    parser.add_argument("--no_specaugment", action="store_true")
    print(json.dumps(run(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
