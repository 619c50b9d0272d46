"""Gated PixelCNN.

Paper: van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves & Kavukcuoglu 2016,
"Conditional Image Generation with PixelCNN Decoders" (arXiv:1606.05328). A fully
visible belief net over the pixels in raster order, p(x) = prod_i p(x_i | x_<i),
computed in one pass by masked convolutions:

- two stacks (section 2.2): the vertical stack sees every pixel in the rows
  above (over the kernel's full width, so no blind spot), the horizontal stack
  the pixels to the left in the current row, and gets the vertical stack's
  pre-activations through a 1x1 convolution;
- gated activations tanh(W_f * x) . sigmoid(W_g * x) (equation 2);
- mask type 'A' in the first layer (the current pixel is hidden), 'B' after,
  with a residual connection in the horizontal stack after the first layer.

Data: 'binary' images (a Bernoulli logit per pixel) and 'image' data with
`levels` levels (a levels-way softmax per pixel, as the paper's 256-way one; the
data is k/(levels-1), so k = round(x (levels-1))); log_likelihood is the exact
log-probability of the discrete image in nats. One channel only (C = 1).

NOTE: the paper's vertical stack uses an (n/2+1) x n kernel followed by a
down-shift; here the equivalent masked n x n kernel (rows strictly above the
centre in the first layer, rows up to the centre after) is used, so the
vertical features at row i see input rows < i only and feed the horizontal
stack without a shift.
NOTE: no conditioning, no skip connections; the output head is
ReLU -> 1x1 conv -> ReLU -> 1x1 conv.
NOTE: `sampler` 'naive' runs the full network once per pixel in raster order
(H*W passes); 'cached' (the default; the caching idea of Ramachandran et al.
2017, "Fast Generation for Convolutional Autoregressive Models",
arXiv:1704.06001, for these two stacks) computes every activation once: at the
start of row i the vertical stack's row i in every layer (it sees rows < i only,
all drawn), then per pixel only the horizontal stack and head at that pixel,
from row buffers of the pixels to its left. About one network pass in all, and
the same samples as 'naive' for the same generator (logits equal to float
rounding, drawn from the same uniforms).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from models.base import ConfigError, FamilyConfig, GenerativeModel, logit_of_mean
from models.masked import (SAMPLERS, AutoregressiveSampler, MaskedConv2d, bernoulli_thresholds,
                           categorical_from_uniform, horizontal_mask, vertical_mask)


@dataclasses.dataclass
class PixelCNNConfig(FamilyConfig):
    channels: int = 32  # feature maps per stack
    layers: int = 5  # gated layers (the first of type 'A')
    kernel: int = 3  # kernel size of the type 'B' layers (odd)
    first_kernel: int = 7  # kernel size of the type 'A' first layer (odd)
    lr: float = 1e-3
    sampler: str = "cached"  # 'cached': each activation computed once (~1 pass); 'naive': a full pass per pixel

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.channels < 1 or self.layers < 1:
            raise ConfigError(f"channels and layers must be positive, got {self.channels} and {self.layers}")
        for key in ("kernel", "first_kernel"):
            k = getattr(self, key)
            if k < 3 or k % 2 == 0:
                raise ConfigError(f"config key '{key}' must be an odd kernel size of at least 3, got {k}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")


def gate(x: torch.Tensor) -> torch.Tensor:
    """tanh(first half) * sigmoid(second half) over channels: (n, 2C, H, W) -> (n, C, H, W)."""
    f, g = x.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class GatedLayer(nn.Module):
    """One layer of both stacks (figure 2 of the paper)."""

    def __init__(self, in_channels: int, channels: int, kernel: int, mask_type: str):
        super().__init__()
        self.vertical = MaskedConv2d(in_channels, 2 * channels, vertical_mask(kernel, mask_type))
        self.horizontal = MaskedConv2d(in_channels, 2 * channels, horizontal_mask(kernel, mask_type))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.residual = mask_type == "B"  # in type 'A' a residual would pass the current pixel through

    def forward(self, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v_pre = self.vertical(v)  # (n, 2C, H, W): input rows above only
        h_pre = self.horizontal(h) + self.v_to_h(v_pre)  # (n, 2C, H, W)
        h_new = self.h_out(gate(h_pre))  # (n, C, H, W)
        return gate(v_pre), h_new + h if self.residual else h_new


class PixelCNN(GenerativeModel):
    name = "pixelcnn"
    branch = "explicit density / tractable / fully visible belief net"
    paper = "van den Oord et al. 2016, arXiv:1606.05328"
    likelihood_kind = "exact"
    likelihood_method = "exact (autoregressive product)"
    Config = PixelCNNConfig
    supported_kinds = ("binary", "image")

    @classmethod
    def check_data(cls, config: PixelCNNConfig) -> None:
        super().check_data(config)
        if len(config.data_shape) != 3:
            raise ConfigError(f"pixelcnn needs image-shaped data (C, H, W), got data_shape {list(config.data_shape)}")
        if config.data_shape[0] != 1:
            raise ConfigError(f"pixelcnn models single-channel images only (C = 1), got {config.data_shape[0]} channels")

    def __init__(self, config: PixelCNNConfig):
        super().__init__(config)
        c = config
        self.out_channels = 1 if c.data_kind == "binary" else c.levels
        self.stack = nn.ModuleList(
            GatedLayer(1 if i == 0 else c.channels, c.channels, c.first_kernel if i == 0 else c.kernel,
                       "A" if i == 0 else "B")
            for i in range(c.layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(c.channels, c.channels, 1), nn.ReLU(), nn.Conv2d(c.channels, self.out_channels, 1)
        )
        # Channels-last kernels: the CPU's convolutions run 1.2x (float32) to 1.7x (bfloat16) faster in that layout
        # (oneDNN's native one), and every activation follows the weights' layout. Same values, other strides.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (n, K, H, W) of every pixel given the pixels before it; K = 1 (binary) or levels."""
        v = h = x  # (n, 1, H, W)
        for layer in self.stack:
            v, h = layer(v, h)  # (n, C, H, W) each
        return self.head(h)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-probability (n,) of the discrete images x (n, 1, H, W), in nats."""
        logits = self(x).float()  # (n, K, H, W); float32 under a bf16 autocast too (a sum over every pixel)
        if self.config.data_kind == "binary":
            return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
        k = torch.round(x * (self.config.levels - 1)).long()  # (n, 1, H, W)
        return F.log_softmax(logits, dim=1).gather(1, k).sum((1, 2, 3))

    @torch.no_grad()
    def init_from_data(self, train: torch.Tensor) -> None:
        """Output biases (shared over positions): the logit of the mean pixel (binary) or the log of the
        training frequency of each level."""
        out = self.head[-1].bias
        if self.config.data_kind == "binary":
            out.copy_(logit_of_mean(train.flatten()))
        else:
            k = torch.round(train.flatten() * (self.config.levels - 1)).long()
            counts = torch.bincount(k, minlength=self.config.levels).double() + 1.0  # Laplace-smoothed
            out.copy_((counts / counts.sum()).log().float())

    def training_step(self, batch: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        loss = -self.log_prob(batch).mean()
        self.optimize(optimizers["main"], loss)
        return {"loss": loss.item()}

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x.to(self.device)).cpu()

    def categorical_logits(self, x_flat: torch.Tensor) -> torch.Tensor:
        """Flat values (n, H*W) -> per-pixel categorical logits (n, H*W, K') (K' = 2 for binary)."""
        logits = self(x_flat.view(-1, *self.config.data_shape)).flatten(2).transpose(1, 2)  # (n, H*W, K)
        if self.config.data_kind == "binary":
            logits = torch.cat([torch.zeros_like(logits), logits], -1)  # (n, H*W, 2): [log-odds of 0, of 1]
        return logits

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        c = self.config
        u = torch.rand((n, c.dim), generator=generator).to(self.device)  # (n, H*W)
        k = 2 if c.data_kind == "binary" else c.levels
        values = torch.arange(k, device=self.device, dtype=torch.float32) / (k - 1)  # level k -> k/(levels-1)
        if c.sampler == "cached":
            return self.sample_cached(u, values).view(n, *c.data_shape).cpu()
        sampler = AutoregressiveSampler(order=list(range(c.dim)))  # raster order: H*W passes
        return sampler(self.categorical_logits, u, values).view(n, *c.data_shape).cpu()

    @torch.no_grad()
    def sample_cached(self, u: torch.Tensor, values: torch.Tensor, known: torch.Tensor | None = None,
                      observed: torch.Tensor | None = None) -> torch.Tensor:
        """Images (n, H*W) drawn in raster order from uniforms u (n, H*W), each activation computed once.

        With `known` (n, H*W) values and an `observed` (n, H*W) boolean mask, observed pixels are
        clamped to their known values as their turn comes and the others drawn given every pixel
        before them, observed or drawn (genzoo/uses/inpaint_samplers.py: exact conditional samples
        when the observed pixels all come first in raster order, e.g. the top half).

        Row i starts with the vertical stack's row i in every layer: the masked kernel's rows (rows
        < i of the image in the first layer, rows i-p..i of the layer below after) applied to
        channels-last buffers padded with zeros as the convolutions pad, and with it the row's
        v_to_h term. Pixel (i, j) then needs, in every layer, the horizontal stack at (i, j) only:
        its masked 1 x k window is the pixels (i, j-p..j) of the layer below (j-p..j-1 in the
        first), kept in a row buffer with p zeros on the left; then the head at (i, j). Each logit
        equals, to float rounding, the naive loop's at that step, and is drawn by the same inverse
        CDF of the same uniform.
        """
        c = self.config
        _, height, width = c.data_shape
        n, channels, dev = u.shape[0], c.channels, u.device
        pads = [layer.vertical.padding[0] for layer in self.stack]  # p = k // 2 of each layer's kernels
        q = pads[0]
        image = torch.zeros(n, height + q, width + 2 * q, device=dev)  # x, q zero rows above, q columns each side
        x = image[:, q:, q : q + width]  # (n, H, W) view: the pixels drawn so far
        v_in = [torch.zeros(n, height + p, width + 2 * p, channels, device=dev) for p in pads[1:]]  # layer l's v
        h_in = [torch.zeros(n, p + width, channels, device=dev) for p in pads[1:]]  # layer l's h, row i so far
        plan = []
        for layer, p in zip(self.stack, pads):
            vertical, horizontal = layer.vertical, layer.horizontal
            rows = int(vertical.mask[0, 0, :, p].sum())  # kernel rows the mask keeps: p ('A') or p + 1 ('B')
            taps = int(horizontal.mask[0, 0, 0].sum())  # kernel columns it keeps: p ('A') or p + 1 ('B')
            v_weight = (vertical.weight * vertical.mask)[:, :, :rows].permute(0, 2, 3, 1)  # (2C, rows, k, C_in)
            h_weight = (horizontal.weight * horizontal.mask)[:, :, 0, :taps].permute(0, 2, 1)  # (2C, taps, C_in)
            plan.append((rows, taps, v_weight.reshape(2 * channels, -1).t(), vertical.bias,  # (rows k C_in, 2C)
                         h_weight.reshape(2 * channels, -1).t(),  # (taps C_in, 2C)
                         layer.v_to_h.weight[:, :, 0, 0].t(), layer.v_to_h.bias + horizontal.bias,  # (2C, 2C)
                         layer.h_out.weight[:, :, 0, 0].t(), layer.h_out.bias))  # (C, C)
        (w1, b1), (w2, b2) = [(conv.weight[:, :, 0, 0].t(), conv.bias) for conv in (self.head[1], self.head[3])]
        binary = c.data_kind == "binary"
        threshold = bernoulli_thresholds(u).t().unsqueeze(-1) if binary else None  # (H*W, n, 1)
        last = len(self.stack) - 1
        for i in range(height):
            v_to_h = []  # per layer (n, W, 2C): v_to_h of row i's vertical pre-activations, plus the horizontal bias
            for l, (rows, _, v_weight, v_bias, _, vh_weight, vh_bias, _, _) in enumerate(plan):
                if l == 0:
                    windows = image[:, i : i + rows].unfold(2, 2 * q + 1, 1).permute(0, 2, 1, 3)  # (n, W, rows, k)
                else:
                    windows = v_in[l - 1][:, i : i + rows].unfold(2, 2 * pads[l] + 1, 1).permute(0, 2, 1, 4, 3)
                pre = torch.addmm(v_bias, windows.reshape(n * width, -1), v_weight)  # (n W, 2C)
                if l < last:
                    p = pads[l + 1]
                    v_in[l][:, i + p, p : p + width] = gate(pre).view(n, width, channels)
                v_to_h.append(torch.addmm(vh_bias, pre, vh_weight).view(n, width, -1))
            for j in range(width):
                for l, (_, taps, _, _, h_weight, _, _, out_weight, out_bias) in enumerate(plan):
                    p = pads[l]
                    if l == 0:
                        window = image[:, i + q, j + q - taps : j + q]  # (n, taps): x at (i, j-p..j-1)
                    else:
                        window = h_in[l - 1][:, j + p + 1 - taps : j + p + 1].reshape(n, -1)  # h at (i, j-p..j)
                    h_new = torch.addmm(out_bias, gate(torch.addmm(v_to_h[l][:, j], window, h_weight)), out_weight)
                    h = h_new + h_in[l - 1][:, j + p] if self.stack[l].residual else h_new  # (n, C)
                    if l < last:
                        h_in[l][:, j + pads[l + 1]] = h
                logits = torch.addmm(b2, torch.relu(torch.addmm(b1, torch.relu(h), w1)), w2)  # (n, K)
                if binary:  # the inverse-CDF draw of categorical_logits' [0, logit], in logit space
                    torch.gt(logits, threshold[i * width + j], out=image[:, i + q, j + q : j + q + 1])
                else:
                    x[:, i, j] = values[categorical_from_uniform(logits, u[:, i * width + j])]
                if observed is not None:
                    p = i * width + j
                    x[:, i, j] = torch.where(observed[:, p], known[:, p].to(x.dtype), x[:, i, j])
        return x.reshape(n, -1)  # (n, H*W)
