"""The autoencoders (torch): a teacher, and a student made from it by structured pruning.

Both read one point's standardised window ``[N, 1, W]`` and squeeze it through a latent of
``W / 8 * LATENT`` numbers; the exported graph ends with the mean squared error of the
window's newest samples.
"""

from __future__ import annotations

import torch
from torch import nn

LATENT = 2
TAIL = 8
TEACHER_WIDTHS = (32, 64, 64)
STUDENT_WIDTHS = (8, 16, 16)


class WindowAE(nn.Module):
    def __init__(self, widths: tuple[int, int, int]) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.widths = widths
        self.enc = nn.ModuleList(
            [
                nn.Conv1d(1, c1, 5, padding=2),
                nn.Conv1d(c1, c2, 5, stride=2, padding=2),
                nn.Conv1d(c2, c3, 5, stride=2, padding=2),
                nn.Conv1d(c3, LATENT, 3, stride=2, padding=1),
            ]
        )
        self.dec = nn.ModuleList(
            [
                nn.Conv1d(LATENT, c3, 3, padding=1),
                nn.Conv1d(c3, c2, 5, padding=2),
                nn.Conv1d(c2, c1, 5, padding=2),
                nn.Conv1d(c1, 1, 5, padding=2),
            ]
        )
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, conv in enumerate(self.enc):
            h = conv(h)
            if i < len(self.enc) - 1:
                h = torch.relu(h)
        for i, conv in enumerate(self.dec):
            if i < 3:
                h = self.up(h)
            h = conv(h)
            if i < len(self.dec) - 1:
                h = torch.relu(h)
        return h

    def convs(self) -> list[nn.Conv1d]:
        return [m for m in [*self.enc, *self.dec] if isinstance(m, nn.Conv1d)]


class WithError(nn.Module):
    """Export wrapper: windows -> mean squared reconstruction error of the newest ``tail``
    samples of each window (the older ones give the context; scoring them too would keep a
    fault's score up for a whole window after it ended)."""

    def __init__(self, ae: WindowAE, tail: int = TAIL) -> None:
        super().__init__()
        self.ae = ae
        self.tail = tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = (self.ae(x) - x)[:, :, -self.tail :]
        error: torch.Tensor = (d * d).mean(dim=(1, 2))
        return error


def prune(teacher: WindowAE, widths: tuple[int, int, int]) -> WindowAE:
    """Structured pruning: keep each layer's filters with the largest L1 norm, drop the rest
    (and the matching input channels of the next layer); the result starts distillation."""
    student = WindowAE(widths)
    keep_in = torch.arange(1)
    fixed = {3: LATENT, 7: 1}  # the latent and the output keep all their channels
    targets = [widths[0], widths[1], widths[2], LATENT, widths[2], widths[1], widths[0], 1]
    with torch.no_grad():
        for i, (src, dst) in enumerate(zip(teacher.convs(), student.convs(), strict=True)):
            w = src.weight[:, keep_in, :]
            if i in fixed:
                keep_out = torch.arange(fixed[i])
            else:
                norms = w.abs().sum(dim=(1, 2))
                keep_out = torch.sort(torch.topk(norms, targets[i]).indices).values
            dst.weight.copy_(w[keep_out])
            assert src.bias is not None and dst.bias is not None
            dst.bias.copy_(src.bias[keep_out])
            keep_in = keep_out
    return student


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
