"""The reference code's SupCon training step in PyTorch, used only as a speed baseline.

`tools/benchmark.py train-step --vs-torch` times this beside the JAX step on the same device:
CNN6 encoder (reference orientation) + projector, the two views through the encoder in two
separate calls, SupCon with the all-but-self denominator (docs/method.md §4), PyTorch Adam with L2 weight
decay. Nothing in the package imports this module.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.avg_pool2d(F.relu(self.bn1(self.conv1(x))), 2)


class CNN6(nn.Module):
    """Input [B, 64 mel, T]; mean over time, then max + mean over frequency (docs/method.md §3)."""

    def __init__(self, channels=(64, 128, 256, 512)):
        super().__init__()
        cins = (1,) + tuple(channels[:-1])
        self.blocks = nn.ModuleList(_ConvBlock(a, b) for a, b in zip(cins, channels))

    def forward(self, x):
        x = x.unsqueeze(1)
        for block in self.blocks:
            x = block(x)
        x = x.mean(dim=3)
        return x.max(dim=2).values + x.mean(dim=2)


class Projector(nn.Module):
    def __init__(self, cin=512, hidden=512, out=128):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(cin, hidden), nn.Linear(hidden, out)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def supcon(z1, z2, labels, temperature=0.06):
    """SupCon over 2N views, denominator over every other view."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = z.shape[0]
    logits = z @ z.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    lab = torch.cat([labels, labels])
    not_self = 1.0 - torch.eye(n2, device=z.device)
    pos = (lab[:, None] == lab[None, :]).float() * not_self
    log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(1, keepdim=True))
    return -((pos * log_prob).sum(1) / pos.sum(1)).mean()


class SupConStep:
    """One optimiser step of SupCon pretraining on a fixed two-view batch."""

    def __init__(self, batch: int, frames: int, channels=(64, 128, 256, 512),
                 device: str = "cpu", dtype=torch.float32, seed: int = 0):
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.encoder = CNN6(channels).to(self.device)
        self.projector = Projector(channels[-1]).to(self.device)
        params = list(self.encoder.parameters()) + list(self.projector.parameters())
        self.opt = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-4)
        self.dtype = dtype
        g = torch.Generator().manual_seed(seed)
        self.view1 = torch.randn(batch, 64, frames, generator=g).to(self.device)
        self.view2 = torch.randn(batch, 64, frames, generator=g).to(self.device)
        self.labels = torch.randint(0, 4, (batch,), generator=g).to(self.device)

    def __call__(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.dtype,
                            enabled=self.dtype != torch.float32):
            z1 = self.projector(self.encoder(self.view1))
            z2 = self.projector(self.encoder(self.view2))
        loss = supcon(z1.float(), z2.float(), self.labels)
        loss.backward()
        self.opt.step()
        return loss

    def sync(self, loss) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())
