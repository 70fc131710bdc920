"""Rotary position embeddings (Su et al. 2021) in the "rotate half" layout transformers uses, with every rope
variant an imported family may carry: linear, dynamic, Llama 3, YaRN and longrope scaling, and partial rotary."""

from __future__ import annotations

import math

import torch


def rope_frequencies(dim: int, theta: float, scaling: dict | None, long: bool = False) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (dim/2,) and the cos/sin scale of a rope variant, as transformers' modeling_rope_utils
    computes them: linear (positions / factor), dynamic (plain within the trained context, where foundry keeps it),
    llama3 (Llama 3.1's wavelength bands), yarn (Peng et al. 2023, NTK-by-parts + attention factor) and longrope
    (Phi-3: per-dimension short or `long` factors)."""
    scaling = scaling or {}
    kind = scaling.get("rope_type", "default")
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv_freq = 1.0 / (theta ** exponent)
    if kind == "linear":
        return inv_freq / scaling["factor"], 1.0
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)  # long wavelengths: interpolate
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
        return torch.where(medium, smoothed, scaled), 1.0
    if kind == "yarn":
        factor, old_len = scaling["factor"], scaling["original_max_position_embeddings"]

        def mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        attention = scaling.get("attention_factor")
        if attention is None:
            m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
            attention = float(mscale(factor, m) / mscale(factor, m_all)) if m and m_all else mscale(factor)
        beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

        def correction_dim(rotations):  # the dimension that turns `rotations` times over the trained context
            return (dim * math.log(old_len / (rotations * 2 * math.pi))) / (2 * math.log(theta))

        low, high = correction_dim(beta_fast), correction_dim(beta_slow)
        if scaling.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001  # as transformers, against a zero-width ramp
        ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        pos_freqs = theta ** exponent
        extrapolate = 1 - ramp
        inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate
        return inv_freq, attention
    if kind == "longrope":
        old_len = scaling["original_max_position_embeddings"]
        factor = scaling.get("factor") or scaling["max_position_embeddings"] / old_len
        attention = scaling.get("attention_factor")
        if attention is None:
            attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(old_len))
        ext = torch.tensor(scaling["long_factor" if long else "short_factor"], dtype=torch.float32)
        return 1.0 / (ext * theta ** exponent), attention
    return inv_freq, 1.0  # default, and dynamic within its trained context


def rotary_tables(head_dim: int, max_len: int, theta: float, scaling: dict | None = None,
                  long: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    # on the CPU even while a model is built on the meta device (an import's weights-free skeleton); the
    # tables move with the model's .to(device)
    with torch.device("cpu"):
        inv_freq, attention = rope_frequencies(head_dim, theta, scaling, long)
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (max_len, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (max_len, hd)
        return emb.cos() * attention, emb.sin() * attention


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, hd); cos/sin: (B, 1, T, rd), rd <= hd (partial rotary: the rest passes through, as Phi-3)
    rd = cos.shape[-1]
    if rd < x.shape[-1]:
        return torch.cat((apply_rotary(x[..., :rd], cos, sin), x[..., rd:]), dim=-1)
    half = rd // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
