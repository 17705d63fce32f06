"""``asn2n denoise`` of whole images as one torch module that imports torch alone.

This file is copied as it is into the model packages ``asn2n export`` writes (the
architecture of their ``pytorch_state_dict`` weights, and scripted with
``torch.jit.script`` for their TorchScript weights), so it must not import anything but
torch and the standard library.  It repeats, in TorchScript-compatible torch, what the
package computes for one frame (:func:`asn2n_dask.predict.denoise_frame` with statistics
of that frame alone, :func:`asn2n_dask.stats.channel_stats`):

1. the frame's statistics: minimum, maximum and the normalisation, clip and floor
   percentiles (numpy's linear interpolation, exactly, from a sort; the package reads
   them from histograms, exactly for 8- and 16-bit data and to within 2**-32 of the
   range otherwise);
2. risk classes of every patch (:mod:`asn2n_dask.risk`) on the channel's resolved risk
   estimator;
3. per-patch normalisation ranges (``adaptive``, ``local`` or ``global``,
   :mod:`asn2n_dask.normalize`), interpolated bilinearly between patch centres;
4. frame-anchored tiles (mirrored past the edges), each normalised, split into its two
   twins (:mod:`asn2n_dask.pairs`), passed through the channel's U-Net with test-time
   augmentation, and averaged;
5. Gaussian-weighted overlap blending (:mod:`asn2n_dask.blend`), the normalisation
   inverted, and the result held within the frame's range widened by a quarter of it.

Tests check that it equals the package's own path to float precision.
"""

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNet", "UNet3d", "ChannelDenoiser", "Denoiser", "self_inspired_twins"]


class _Block(nn.Sequential):
    conv: type[nn.Module] = nn.Conv2d

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            self.conv(cin, cout, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
            self.conv(cout, cout, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
        )


def _encoder_decoder(widths: list[int], block: type[nn.Module]) -> tuple[nn.ModuleList, nn.ModuleList, int]:
    """The down and up blocks of a U-Net of ``widths``, and the width its head takes."""
    down, up = nn.ModuleList(), nn.ModuleList()
    cin = 1
    for w in widths:
        down.append(block(cin, w))
        cin = w
    for w_skip in reversed(widths[:-1]):
        up.append(block(cin + w_skip, w_skip))
        cin = w_skip
    return down, up, cin


class UNet(nn.Module):
    """The 2-D U-Net, written for TorchScript: the one definition of its layers and forward
    pass, which :class:`asn2n_dask.model.UNet` extends with checks of its widths.
    ``(N, 1, H, W) -> (N, 1, H, W)``, in the normalised range."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.down, self.up, cin = _encoder_decoder(widths, _Block)
        self.head = nn.Conv2d(cin, 1, 1)
        self.levels = len(widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        h = x
        for i, block in enumerate(self.down):
            h = block(h)
            if i < self.levels - 1:
                skips.append(h)
                h = F.max_pool2d(h, 2)
        for i, block in enumerate(self.up):
            skip = skips[len(skips) - 1 - i]
            h = F.interpolate(h, size=[skip.shape[-2], skip.shape[-1]], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], dim=1))
        return x + self.head(h)


class _Block3d(_Block):
    conv = nn.Conv3d


class UNet3d(nn.Module):
    """The 3-D U-Net, written for TorchScript: :class:`UNet`'s layers (the same block
    names) with 3x3x3 convolutions, and a pooling kernel per level, ``[kz, 2, 2]`` with
    ``kz`` 1 (Y and X only) or 2, which :class:`asn2n_dask.model.UNet3d` decides.
    ``(N, 1, Z, Y, X) -> (N, 1, Z, Y, X)``, in the normalised range."""

    def __init__(self, widths: list[int], pools: list[list[int]]) -> None:
        super().__init__()
        self.down, self.up, cin = _encoder_decoder(widths, _Block3d)
        self.head = nn.Conv3d(cin, 1, 1)
        self.levels = len(widths)
        self.pools: list[list[int]] = [[int(k) for k in p] for p in pools]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        h = x
        for i, block in enumerate(self.down):
            h = block(h)
            if i < self.levels - 1:
                skips.append(h)
                h = F.max_pool3d(h, self.pools[i])
        for i, block in enumerate(self.up):
            skip = skips[len(skips) - 1 - i]
            h = F.interpolate(h, size=[skip.shape[-3], skip.shape[-2], skip.shape[-1]], mode="trilinear",
                              align_corners=False)
            h = block(torch.cat([h, skip], dim=1))
        return x + self.head(h)


def _span(lo: float, hi: float) -> float:
    """``hi - lo``, never narrower than float32 resolves there (FrameStats.span; the
    factor is float32's machine epsilon)."""
    return max(hi - lo, 1.1920928955078125e-07 * max(abs(hi), abs(lo), 1e-30))


def _percentile(values: torch.Tensor, q: float) -> float:
    """numpy.percentile (linear) of sorted values."""
    n = values.shape[0]
    pos = (n - 1) * q / 100.0
    k0 = int(math.floor(pos))
    k1 = int(math.ceil(pos))
    f = pos - math.floor(pos)
    a = float(values[k0])
    return a + f * (float(values[k1]) - a)


def _patch_grid(x: torch.Tensor, patch: int) -> torch.Tensor:
    """A frame as (nY, nX, patch, patch) blocks from the origin, cut blocks NaN-completed."""
    h, w = x.shape[0], x.shape[1]
    ny, nx = (h + patch - 1) // patch, (w + patch - 1) // patch
    padded = torch.full((ny * patch, nx * patch), float("nan"), dtype=x.dtype, device=x.device)
    padded[:h, :w] = x
    return padded.reshape(ny, patch, nx, patch).permute(0, 2, 1, 3)


def _moments(scaled: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, std (ddof 1) and unbiased skewness per patch (risk.patch_moments)."""
    g = _patch_grid(scaled, patch)
    v = g.reshape(g.shape[0], g.shape[1], patch * patch)
    n = (~torch.isnan(v)).sum(-1).to(scaled.dtype)
    mean = torch.nansum(v, dim=-1) / n
    d = v - mean.unsqueeze(-1)
    m2 = torch.nansum(d * d, dim=-1) / n
    m3 = torch.nansum(d * d * d, dim=-1) / n
    std = torch.sqrt(m2 * n / torch.clamp(n - 1, min=1))
    skew = m3 / m2 ** 1.5 * torch.sqrt(n * (n - 1)) / (n - 2)
    skew = torch.where((m2 > 1e-20) & (n >= 3), skew, torch.zeros_like(skew))
    return mean, std, skew


def _noise_var(scaled: torch.Tensor, patch: int) -> torch.Tensor:
    """Noise variance per patch from 2x2 diagonal differences (risk.patch_noise_var)."""
    q = _patch_grid(scaled, patch)
    e = patch // 2 * 2
    q = q[:, :, :e, :e]
    d = 0.5 * (q[:, :, 0::2, 0::2] + q[:, :, 1::2, 1::2] - q[:, :, 0::2, 1::2] - q[:, :, 1::2, 0::2])
    d2 = (d * d).reshape(q.shape[0], q.shape[1], -1)
    n = (~torch.isnan(d2)).sum(-1)
    return torch.where(n > 0, torch.nansum(d2, dim=-1) / torch.clamp(n, min=1), torch.zeros_like(d2[:, :, 0]))


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Coordinates mirrored into [0, n) (blend.reflect_index)."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    j = torch.remainder(i, period)
    return torch.where(j < n, j, period - j)


def _interp_weights(pos: torch.Tensor, n: int, patch: int) -> torch.Tensor:
    """Linear interpolation weights from patch centres to positions (normalize.interp_weights)."""
    m = (n + patch - 1) // patch
    p = pos.to(torch.float64)
    if m == 1:
        return torch.ones((p.shape[0], 1), dtype=torch.float64, device=pos.device)
    centres = torch.clamp(torch.arange(m, dtype=torch.float64, device=pos.device) * patch + (patch - 1) / 2.0,
                          max=float(n - 1))
    k = torch.clamp(torch.searchsorted(centres, p, right=True) - 1, 0, m - 2)
    t = torch.clamp((p - centres[k]) / (centres[k + 1] - centres[k]), 0.0, 1.0)
    w = (1.0 - t).unsqueeze(1) * F.one_hot(k, m).to(torch.float64)
    return w + t.unsqueeze(1) * F.one_hot(k + 1, m).to(torch.float64)


def _upsample(x: torch.Tensor, n_out: int, dim: int) -> torch.Tensor:
    """Fourier upsampling by two onto the frame's grid (pairs.fourier_upsample, offset 0.5)."""
    offset = 0.5
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    ext = torch.cat([x, x.flip(-1)], dim=-1)
    spec = torch.fft.rfft(ext, dim=-1)
    shape = list(x.shape[:-1])
    shape.append(2 * n + 1)
    out_spec = torch.zeros(shape, dtype=spec.dtype, device=x.device)
    out_spec[..., : n + 1] = spec
    out_spec[..., n] = out_spec[..., n] * 0.5
    k = torch.arange(2 * n + 1, device=x.device, dtype=x.dtype)
    out_spec = out_spec * torch.polar(torch.ones_like(k), -2 * math.pi * k * (offset / 2.0) / (2 * n))
    up = torch.fft.irfft(out_spec, n=4 * n, dim=-1) * 2.0
    return up[..., :n_out].movedim(-1, dim)


def self_inspired_twins(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two self-inspired twins of (..., H, W) frames (the package's pairs.make_twins_torch)."""
    h, w = frames.shape[-2], frames.shape[-1]
    f = frames[..., : h // 2 * 2, : w // 2 * 2]
    a = 0.5 * (f[..., 0::2, 0::2] + f[..., 1::2, 1::2])
    b = 0.5 * (f[..., 0::2, 1::2] + f[..., 1::2, 0::2])
    return _upsample(_upsample(a, h, -2), w, -1), _upsample(_upsample(b, h, -2), w, -1)


class ChannelDenoiser(nn.Module):
    """Denoise one 2-D frame of one channel: ``(H, W) -> (H, W)`` float32, input units.

    Parameters
    ----------
    widths : list of int
        The U-Net's feature channels per level.
    mode : {"adaptive", "local", "global"}
        The normalisation applied (``dataset`` resolved with the channel's decision).
    min_fraction : float
        Narrowest local range as a fraction of the global one, for ``mode``.
    estimator : {"reference", "noise-aware"}
        The channel's risk estimator.
    norm : dict
        ``low_percentile``, ``high_percentile``, ``adaptive_weight`` and the risk
        thresholds (``patch``, ``clip_percentile``, ``floor_percentile``, ``bg_mean``,
        ``bg_std``, ``bg_skew``, ``bg_std_skew``, ``sb_mean``, ``sb_std``, ``sb_skew``).
    infer : dict
        ``tile``, ``stride``, ``blend`` (gaussian, uniform or none), ``sigma_fraction``,
        ``weight_floor``, ``infer_on`` (twins or raw), ``tta`` (1, 2, 4 or 8),
        ``batch`` (tiles per network call) and ``norm_range`` (auto, model or data;
        default data).
    trained : list of float, optional
        The channel's normalisation range in its training data, ``[lo, hi]``: with
        ``norm_range`` ``model``, or ``auto`` when the image's own range agrees with it
        (:func:`asn2n_dask.method.ranges_agree`), the image is normalised on it.
        Without it, every image on its own range.
    """

    window: torch.Tensor

    def __init__(self, widths: list[int], mode: str, min_fraction: float, estimator: str,
                 norm: dict[str, Any], infer: dict[str, Any], trained: list[float] | None = None) -> None:
        super().__init__()
        rule = str(infer.get("norm_range", "data")) if trained is not None else "data"
        self.range_rule = rule
        self.trained_lo = float(trained[0]) if trained is not None else 0.0
        self.trained_hi = float(trained[1]) if trained is not None else 1.0
        self.net = UNet(widths)
        self.mode = str(mode)
        self.min_fraction = float(min_fraction)
        self.noise_aware = estimator == "noise-aware"
        self.low = float(norm["low_percentile"])
        self.high = float(norm["high_percentile"])
        self.weight = str(norm["adaptive_weight"])
        self.patch = int(norm["patch"])
        self.clip = float(norm["clip_percentile"])
        self.floor = float(norm["floor_percentile"])
        self.bg_mean, self.bg_std = float(norm["bg_mean"]), float(norm["bg_std"])
        self.bg_skew, self.bg_std_skew = float(norm["bg_skew"]), float(norm["bg_std_skew"])
        self.sb_mean, self.sb_std, self.sb_skew = float(norm["sb_mean"]), float(norm["sb_std"]), float(norm["sb_skew"])
        self.tile = int(infer["tile"])
        self.stride = int(infer["stride"])
        self.twins = str(infer["infer_on"]) == "twins"
        self.batch = int(infer["batch"])
        tta = int(infer["tta"])
        self.turns: list[int] = [0] if tta == 1 else [0, 2] if tta == 2 else [0, 1, 2, 3] * (tta // 4)
        self.flips: list[bool] = [False, True] if tta == 2 else [k >= 4 for k in range(tta)] if tta == 8 else \
            [False] * tta
        self.register_buffer("window", self._window(str(infer["blend"]), float(infer["sigma_fraction"]),
                                                    float(infer["weight_floor"])), persistent=False)

    def _window(self, blend: str, sigma_fraction: float, floor: float) -> torch.Tensor:
        """Blend weights of a tile (blend.blend_window), float32."""
        t, s = self.tile, self.stride
        if blend == "uniform":
            return torch.ones((t, t), dtype=torch.float32)
        if blend == "none":
            m = (t - s) // 2
            w1 = torch.zeros(t, dtype=torch.float64)
            w1[m : m + s] = 1.0
        else:
            c = (t - 1) / 2.0
            sigma = sigma_fraction * t
            w1 = torch.exp(-((torch.arange(t, dtype=torch.float64) - c) ** 2) / (2 * sigma**2))
        w = torch.outer(w1, w1)
        if blend == "gaussian":
            w = torch.clamp(w, min=floor)
        return w.to(torch.float32)

    def _agrees(self, lo: float, hi: float) -> bool:
        """The image's range and the training range overlap by at least half the narrower
        one (:func:`asn2n_dask.method.ranges_agree`)."""
        overlap = min(hi, self.trained_hi) - max(lo, self.trained_lo)
        return overlap >= 0.5 * min(_span(lo, hi), _span(self.trained_lo, self.trained_hi))

    def _risk(self, img: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        """Risk class per patch (0 safe, 1 weak background, 2 sparse bright)."""
        span = _span(lo, hi)
        mean, std, skew = _moments((torch.clamp(img, lo, hi) - lo) / span, self.patch)
        if self.noise_aware:
            noise = _noise_var((img - lo) / span, self.patch)
            std = torch.sqrt(torch.clamp(std * std - noise, min=0.0))
        weak = ((mean <= self.bg_mean) & (std <= self.bg_std)) | ((skew <= self.bg_skew) & (std <= self.bg_std_skew))
        sparse = (mean <= self.sb_mean) & (std >= self.sb_std) & (skew >= self.sb_skew)
        out = torch.where(sparse, 2, 0)
        return torch.where(weak, 1, out)

    def _ranges(self, img: torch.Tensor, lo: float, hi: float,
                risk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch normalisation range (normalize.patch_ranges_torch)."""
        span = _span(lo, hi)
        ny, nx = (img.shape[0] + self.patch - 1) // self.patch, (img.shape[1] + self.patch - 1) // self.patch
        if self.mode == "global":
            return (torch.full((ny, nx), lo, dtype=img.dtype, device=img.device),
                    torch.full((ny, nx), lo + span, dtype=img.dtype, device=img.device))
        v = _patch_grid(torch.clamp(img, lo, hi), self.patch).reshape(ny, nx, self.patch * self.patch)
        nan = torch.isnan(v)
        plo = torch.where(nan, torch.full_like(v, math.inf), v).amin(-1)
        phi = torch.where(nan, torch.full_like(v, -math.inf), v).amax(-1)
        min_span = self.min_fraction * span
        short = (phi - plo) < min_span
        centre = 0.5 * (phi + plo)
        plo = torch.where(short, torch.clamp(torch.clamp(centre - 0.5 * min_span, max=hi - min_span), min=lo), plo)
        phi = torch.where(short, plo + min_span, phi)
        if self.mode == "adaptive":
            wt = self._local_weight(img, lo, span, risk, plo, phi)
            plo = lo + wt * (plo - lo)
            phi = (lo + span) + wt * (phi - (lo + span))
        return plo, phi

    def _local_weight(self, img: torch.Tensor, lo: float, span: float, risk: torch.Tensor, plo: torch.Tensor,
                      phi: torch.Tensor) -> torch.Tensor:
        """How far each safe patch moves towards its own range (normalize.local_weight_torch)."""
        safe = (risk == 0).to(img.dtype)
        if self.weight == "class":
            return safe
        x = (img - lo) / span
        noise = _noise_var(x, self.patch)
        one, zero = torch.ones_like(noise), torch.zeros_like(noise)
        if self.weight == "range":
            h, w = x.shape[0], x.shape[1]
            ny, nx = (h + self.patch - 1) // self.patch, (w + self.patch - 1) // self.patch
            rows = torch.clamp(h - torch.arange(ny, device=x.device) * self.patch, max=self.patch)
            cols = torch.clamp(w - torch.arange(nx, device=x.device) * self.patch, max=self.patch)
            n = (rows.unsqueeze(1) * cols.unsqueeze(0)).to(x.dtype)
            spread = (phi - plo) / span
            live = spread > 1e-20  # flat: the range is all noise-free background
            expect = 2.0 * torch.sqrt(2.0 * torch.log(torch.clamp(n, min=2.0))) * torch.sqrt(noise)
            share = torch.where(live, 1.0 - expect / torch.where(live, spread, one), zero)
        else:
            _, std, _ = _moments(x, self.patch)
            var = std * std
            live = var > 1e-20
            share = torch.where(live, 1.0 - noise / torch.where(live, var, one), zero)
        return safe * torch.clamp(share, 0.0, 1.0)

    def _predict(self, tiles: torch.Tensor) -> torch.Tensor:
        """(N, 3, t, t) tiles of (pixels, offset, scale) -> (N, 1, t, t) in the normalised
        range: the views' network outputs with test-time augmentation, averaged."""
        raw, offset, scale = tiles[:, :1].double(), tiles[:, 1:2].double(), tiles[:, 2:3].double()
        if self.twins:
            a, b = self_inspired_twins(raw)
            views = torch.cat([((a - offset) / scale).float(), ((b - offset) / scale).float()])
        else:
            views = ((raw - offset) / scale).float()
        acc = torch.zeros_like(views)
        for k, flip in zip(self.turns, self.flips):
            x = torch.rot90(views.flip(-1) if flip else views, k, [-2, -1])
            y = torch.rot90(self.net(x), -k, [-2, -1])
            acc = acc + (y.flip(-1) if flip else y)
        pred = acc / len(self.turns)
        return pred.reshape(-1, tiles.shape[0], 1, self.tile, self.tile).mean(0)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        img = frame.to(torch.float64)
        h, w = img.shape[0], img.shape[1]
        values = torch.sort(img.flatten()).values
        mn, mx = float(values[0]), float(values[-1])
        if mx <= mn:
            lo_q, hi_q, clip_q, floor_q = mn, mn, mn, mn
        else:
            lo_q, hi_q = _percentile(values, self.low), _percentile(values, self.high)
            clip_q, floor_q = _percentile(values, self.clip), _percentile(values, self.floor)
        if hi_q <= lo_q:
            hi_q = mx
        norm_lo = lo_q if self.low > 0 else mn
        norm_hi = hi_q
        if self.range_rule == "model" or (self.range_rule == "auto" and self._agrees(norm_lo, norm_hi)):
            norm_lo, norm_hi = self.trained_lo, self.trained_hi
        risk_lo = floor_q if self.noise_aware and self.floor > 0 else mn
        risk_hi = clip_q if clip_q > risk_lo else mx
        risk = self._risk(img, risk_lo, risk_hi)
        plo, phi = self._ranges(img, norm_lo, norm_hi, risk)
        t, s = self.tile, self.stride
        margin = (t - s) // 2
        ys = _reflect(torch.arange(-margin, ((h + s - 1) // s - 1) * s - margin + t, device=img.device), h)
        xs = _reflect(torch.arange(-margin, ((w + s - 1) // s - 1) * s - margin + t, device=img.device), w)
        wy = _interp_weights(ys, h, self.patch)
        wx = _interp_weights(xs, w, self.patch)
        offset = wy @ plo @ wx.T
        scale = torch.clamp(wy @ phi @ wx.T - offset, min=self.min_fraction * _span(norm_lo, norm_hi))
        raw = img.index_select(0, ys).index_select(1, xs)
        block = torch.stack([raw, offset, scale]).float()
        size = (block.shape[1], block.shape[2])
        tiles = block.unfold(1, t, s).unfold(2, t, s).permute(1, 2, 0, 3, 4).reshape(-1, 3, t, t)
        outs: list[torch.Tensor] = []
        for i in range(0, tiles.shape[0], self.batch):
            outs.append(self._predict(tiles[i : i + self.batch]).float() * self.window)
        pred = torch.cat(outs).reshape(1, -1, t * t).transpose(1, 2)
        acc = F.fold(pred, output_size=size, kernel_size=t, stride=s)
        wsum = F.fold(self.window.reshape(1, t * t, 1).expand(1, t * t, tiles.shape[0]), output_size=size,
                      kernel_size=t, stride=s)
        blended = (acc / wsum)[0, 0]
        core = blended[margin : margin + h, margin : margin + w].double()
        out = core * scale[margin : margin + h, margin : margin + w] + offset[margin : margin + h, margin : margin + w]
        reach = 0.25 * max(mx - mn, 0.0)  # predict.OUTPUT_MARGIN
        return torch.clamp(out, mn - reach, mx + reach).float()


class Denoiser(nn.Module):
    """Denoise images of one or more channels, each with its own network:
    ``(B, C, H, W) -> (B, C, H, W)`` float32, in the input's units.

    Every image (one batch entry of one channel) is denoised on its own statistics, and
    normalised on its channel's training range unless the two ranges disagree
    (``infer["norm_range"]``).

    Parameters
    ----------
    widths : list of int
        The U-Nets' feature channels per level.
    channels : list of dict
        Per channel: ``mode``, ``min_fraction``, ``estimator`` and ``trained`` (see
        :class:`ChannelDenoiser`).
    norm, infer : dict
        As for :class:`ChannelDenoiser`.
    """

    def __init__(self, widths: list[int], channels: list[dict[str, Any]], norm: dict[str, Any],
                 infer: dict[str, Any]) -> None:
        super().__init__()
        self.channels = nn.ModuleList([ChannelDenoiser(list(widths), str(c["mode"]), float(c["min_fraction"]),
                                                       str(c["estimator"]), norm, infer, c.get("trained"))
                                       for c in channels])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        for c, channel in enumerate(self.channels):
            for b in range(x.shape[0]):
                out[b, c] = channel(x[b, c])
        return out
