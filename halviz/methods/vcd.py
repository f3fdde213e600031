"""VCD: visual contrastive decoding (Leng et al., CVPR 2024, arXiv 2311.16922).

A baseline every one of the four papers compares against. A second stream sees a noised copy of
the image; tokens the model would say even without a clear picture (language priors) are
penalised by contrasting the two:

    ℓ = (1+α)·ℓ(v) − α·ℓ(v′),   over the tokens with p(v) ≥ β·max p(v) (the others −inf)

v′ = √ᾱ_t·v + √(1−ᾱ_t)·ε, the forward diffusion noise at step t of 1000 on the processed pixel
values, with β_s = σ(linspace(−6, 6, 1000)_s)·(5e-3 − 1e-5) + 1e-5 and ᾱ_t = Π_{s≤t}(1 − β_s)
(the released code's schedule, ``vcd_utils/vcd_add_noise.py``), t = 500 (0-indexed), α = 1,
β = 0.1 as in the paper.

Decisions: ε is drawn once per run from ``seed`` (the code draws it anew per call, so its
results are not reproducible); the noised stream is a row of the column with its own cache, fed
the column's tokens; contrast and cut at every step, the first included (as the code samples).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from halviz.methods.base import Knob, Method, Stream
from halviz.methods.contrast import TopLogits, contrast_logits

if TYPE_CHECKING:
    from halviz.engine.rows import Column, Pass

NOISED = "noised"
DIFFUSION_STEPS = 1000


def noise_schedule(steps: int = DIFFUSION_STEPS) -> torch.Tensor:
    """ᾱ_t for t = 0..steps−1 (float64): the cumulative product of 1 − β under VCD's sigmoid schedule."""
    betas = torch.sigmoid(torch.linspace(-6, 6, steps, dtype=torch.float64)) * (0.5e-2 - 1e-5) + 1e-5
    return torch.cumprod(1 - betas, dim=0)


def diffusion_noise(pixels: torch.Tensor, step: int, noise: torch.Tensor) -> torch.Tensor:
    """√ᾱ_t·x + √(1−ᾱ_t)·ε, in the pixels' dtype."""
    alpha_bar = noise_schedule()[step]
    out = alpha_bar.sqrt() * pixels.double() + (1 - alpha_bar).sqrt() * noise.double()
    return out.to(pixels.dtype)


class VCD(Method):
    name = "vcd"
    title = "VCD"
    summary = "Contrasts with a noised copy of the image, so tokens said without seeing it are penalised."
    reference = "Leng et al., Mitigating Object Hallucinations in LVLMs through Visual Contrastive Decoding, CVPR 2024"
    knobs = (
        Knob("alpha", "α contrast", 1.0, 0.0, 5.0, 0.1, help="logits = (1+α)ℓ(image) − αℓ(noised image)"),
        Knob("beta", "β plausibility", 0.1, 0.0, 1.0, 0.01, help="keep tokens with p ≥ β·max p"),
        Knob("noise_step", "Noise step t", 500, 0, DIFFUSION_STEPS - 1, 1, help="diffusion step of the noise (of 1000)"),
        Knob("seed", "Noise seed", 0, 0, 2**31 - 1, 1),
    )
    hook_points = frozenset({"logits"})

    def __init__(self, **values):
        super().__init__(**values)
        self._top = TopLogits("theta", "noised")

    def streams(self) -> tuple[Stream, ...]:
        return (Stream(NOISED, pixels=self.noised),)

    def noised(self, pixels: torch.Tensor) -> torch.Tensor:
        """The image the noised stream sees (ε drawn on the CPU from ``seed``, so any device agrees)."""
        generator = torch.Generator().manual_seed(int(self.params["seed"]))
        noise = torch.randn(pixels.shape, generator=generator, dtype=torch.float32).to(pixels.device)
        return diffusion_noise(pixels, int(self.params["noise_step"]), noise)

    def setup(self, column: Column) -> None:
        self.alpha, self.beta = float(self.params["alpha"]), float(self.params["beta"])

    def edit_logits(self, p: Pass, logits: torch.Tensor) -> torch.Tensor:
        main, noised = p.main, p.row(NOISED)
        theta, prior = logits[main:main + 1], logits[noised:noised + 1]
        self._top.keep("theta", theta)
        self._top.keep("noised", prior)
        logits = logits.clone()
        logits[main:main + 1] = contrast_logits(theta, prior, self.alpha, self.beta)
        return logits

    def trace_arrays(self) -> dict[str, np.ndarray]:
        """theta/noised_top_ids (T, 5) int32 and _logits (T, 5) float32: the two streams' top tokens per step."""
        return self._top.arrays()
