"""CLIP: an image encoder and a text encoder projected into one embedding space (Radford et al. 2021).

Design choices, each chosen to match Hugging Face `CLIPModel` so export is a config and a state dict:
- Image encoder: a ViT (Dosovitskiy et al. 2021). Non-overlapping patches (a stride-`patch_size` conv
  without bias), a learned class token prepended, learned absolute positions, a LayerNorm before the
  blocks (`pre_layrnorm`, transformers' spelling), pre-norm blocks, and the class token's output after
  `post_layernorm` as the image's pooled output.
- Text encoder: the same pre-norm block with a causal mask and learned positions; the pooled output is
  the final-LayerNorm'd hidden state at the FIRST end-of-text token (CLIP reads the sequence left to
  right, so under the causal mask that token has seen the whole caption and no padding).
- Blocks: LayerNorm -> multi-head attention (q, k, v, out projections with bias) -> residual, LayerNorm
  -> MLP (fc1, quick_gelu or gelu, fc2) -> residual.
- Projections without bias into `embed_dim`, and a learnable temperature `logit_scale` (stored as a log,
  initialised to log(1/0.07)); the objective clamps its exponent at 100 as CLIP does.
- SigLIP (Zhai et al. 2023) adds a learnable `logit_bias`; transformers' `CLIPModel` has none, so export
  leaves it out (it changes no embedding).

Parameter names are exactly those of `CLIPModel.state_dict()` (the bias aside).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from foundry.errors import ConfigError
from foundry.model.config_dict import ConfigDict

ARCHITECTURE = "clip"  # model_config.json's "architecture": how the checkpoint store tells a CLIP from a Llama


@dataclass
class ClipConfig(ConfigDict):
    vocab_size: int = 512
    text_len: int = 32  # caption context, start and end tokens included
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    image_size: int = 32
    patch_size: int = 8
    num_channels: int = 3
    vision_width: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    embed_dim: int = 64  # the shared space (transformers' projection_dim)
    mlp_ratio: int = 4
    norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"  # quick_gelu (OpenAI CLIP) or gelu
    bos_id: int = 0
    eos_id: int = 1
    pad_id: int = 1  # CLIP pads with end-of-text; only the first one is pooled
    logit_scale_init: float = math.log(1 / 0.07)
    logit_bias_init: float | None = None  # a number: a learnable SigLIP bias (SigLIP: -10, with scale log 10)
    init_std: float = 0.02
    architecture: str = ARCHITECTURE

    def __post_init__(self):
        for name in ("vocab_size", "text_len", "text_width", "text_layers", "text_heads", "image_size", "patch_size",
                     "num_channels", "vision_width", "vision_layers", "vision_heads", "embed_dim", "mlp_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model: {name} must be an integer >= 1, got {value!r}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"model: image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        for width, heads, side in ((self.text_width, self.text_heads, "text"),
                                   (self.vision_width, self.vision_heads, "vision")):
            if width % heads:
                raise ConfigError(f"model: {side}_width={width} is not divisible by {side}_heads={heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"model: hidden_act must be one of {sorted(ACTIVATIONS)}, got {self.hidden_act!r}")
        if self.architecture != ARCHITECTURE:
            raise ConfigError(f"model: architecture {self.architecture!r} is not {ARCHITECTURE!r}")
        for name in ("bos_id", "eos_id", "pad_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ConfigError(f"model: {name}={getattr(self, name)} is outside the vocabulary ({self.vocab_size})")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def flops_per_token(self, seq_len: int) -> float:
        return 0.0  # the loop's MFU counts language-model tokens; CLIP reports pairs per second instead


# Presets: `test` for unit tests (seconds on one core), `lesson` for recipes/clip.yaml (a few minutes).
PRESETS: dict[str, dict] = {
    "test": dict(text_width=32, text_layers=1, text_heads=2, vision_width=32, vision_layers=1, vision_heads=2,
                 embed_dim=16, image_size=16, patch_size=8, text_len=16),
    "lesson": dict(text_width=96, text_layers=2, text_heads=4, vision_width=96, vision_layers=3, vision_heads=4,
                   embed_dim=64, image_size=32, patch_size=8, text_len=24),
    "small": dict(text_width=256, text_layers=4, text_heads=4, vision_width=256, vision_layers=6, vision_heads=4,
                  embed_dim=256, image_size=64, patch_size=8, text_len=32),
}


def config_from_preset(name: str, **overrides) -> ClipConfig:
    if name not in PRESETS:
        raise ConfigError(f"model.preset: unknown CLIP preset {name!r}; choose one of {', '.join(PRESETS)}")
    return ClipConfig(**{**PRESETS[name], **overrides})


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)  # OpenAI CLIP's approximation of GELU


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(width, width), nn.Linear(width, width)
        self.v_proj, self.out_proj = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        B, T, C = x.shape
        # (B, T, C) -> (B, heads, T, head_dim)
        q, k, v = (proj(x).view(B, T, self.heads, C // self.heads).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, heads, T, head_dim)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (transformers' CLIPEncoderLayer)."""

    def __init__(self, width: int, heads: int, config: ClipConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(width, eps=config.norm_eps)
        self.self_attn = Attention(width, heads)
        self.layer_norm2 = nn.LayerNorm(width, eps=config.norm_eps)
        self.mlp = MLP(width, width * config.mlp_ratio, config.hidden_act)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), causal)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, width: int, heads: int, n_layers: int, config: ClipConfig):
        super().__init__()
        self.layers = nn.ModuleList(Block(width, heads, config) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, causal)
        return x


class TextEmbeddings(nn.Module):
    def __init__(self, config: ClipConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.text_width)
        self.position_embedding = nn.Embedding(config.text_len, config.text_width)


class TextTransformer(nn.Module):
    def __init__(self, config: ClipConfig):
        super().__init__()
        self.config = config
        self.embeddings = TextEmbeddings(config)
        self.encoder = Encoder(config.text_width, config.text_heads, config.text_layers, config)
        self.final_layer_norm = nn.LayerNorm(config.text_width, eps=config.norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, T) -> pooled (B, text_width): the hidden state at each row's first end-of-text."""
        B, T = input_ids.shape
        positions = torch.arange(T, device=input_ids.device)
        x = self.embeddings.token_embedding(input_ids) + self.embeddings.position_embedding(positions)  # (B, T, C)
        x = self.final_layer_norm(self.encoder(x, causal=True))
        # argmax of a 0/1 row is its first 1 (a row without end-of-text pools its first position)
        eos = (input_ids == self.config.eos_id).int().argmax(dim=-1)  # (B,)
        return x[torch.arange(B, device=x.device), eos]


class VisionEmbeddings(nn.Module):
    def __init__(self, config: ClipConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(config.vision_width))
        self.patch_embedding = nn.Conv2d(config.num_channels, config.vision_width, config.patch_size,
                                         stride=config.patch_size, bias=False)
        self.position_embedding = nn.Embedding(config.num_patches + 1, config.vision_width)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        B = pixel_values.shape[0]
        patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # (B, num_patches, C)
        cls = self.class_embedding.expand(B, 1, -1)  # (B, 1, C)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight  # (B, 1 + num_patches, C)


class VisionTransformer(nn.Module):
    def __init__(self, config: ClipConfig):
        super().__init__()
        self.config = config
        self.embeddings = VisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.vision_width, eps=config.norm_eps)
        self.encoder = Encoder(config.vision_width, config.vision_heads, config.vision_layers, config)
        self.post_layernorm = nn.LayerNorm(config.vision_width, eps=config.norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, 3, H, W), normalised -> pooled (B, vision_width): the class token's output."""
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        x = self.encoder(x, causal=False)
        return self.post_layernorm(x[:, 0])


class Clip(nn.Module):
    def __init__(self, config: ClipConfig):
        super().__init__()
        self.config = config
        self.text_model = TextTransformer(config)
        self.vision_model = VisionTransformer(config)
        self.visual_projection = nn.Linear(config.vision_width, config.embed_dim, bias=False)
        self.text_projection = nn.Linear(config.text_width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        if config.logit_bias_init is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(config.logit_bias_init)))
        else:
            self.logit_bias = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """CLIP's initialisation (Radford et al. 2021's code, as transformers' CLIPPreTrainedModel): attention
        and MLP weights scaled by width and depth, projections by width^-0.5. With a flat 0.02 everywhere
        a small model starts with every caption embedded alike and sits at the chance loss for long."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)) and getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for tower, width, layers in ((self.text_model, self.config.text_width, self.config.text_layers),
                                     (self.vision_model, self.config.vision_width, self.config.vision_layers)):
            for block in tower.encoder.layers:
                for proj in (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj):
                    nn.init.normal_(proj.weight, std=width ** -0.5 * (2 * layers) ** -0.5)
                nn.init.normal_(block.self_attn.out_proj.weight, std=width ** -0.5)
                nn.init.normal_(block.mlp.fc1.weight, std=(2 * width) ** -0.5)
                nn.init.normal_(block.mlp.fc2.weight, std=width ** -0.5 * (2 * layers) ** -0.5)
        text, vision = self.text_model.embeddings, self.vision_model.embeddings
        nn.init.normal_(text.token_embedding.weight, std=std)
        nn.init.normal_(text.position_embedding.weight, std=std)
        nn.init.normal_(vision.class_embedding, std=self.config.vision_width ** -0.5)
        nn.init.normal_(vision.patch_embedding.weight, std=std)
        nn.init.normal_(vision.position_embedding.weight, std=std)
        nn.init.normal_(self.visual_projection.weight, std=self.config.vision_width ** -0.5)
        nn.init.normal_(self.text_projection.weight, std=self.config.text_width ** -0.5)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) -> (B, embed_dim), unit length unless `normalize=False` (transformers'
        `get_image_features` is the unnormalised one)."""
        z = self.visual_projection(self.vision_model(pixel_values))
        return F.normalize(z, dim=-1) if normalize else z

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, T) token ids, each row `bos caption eos pad...` -> (B, embed_dim)."""
        z = self.text_projection(self.text_model(input_ids))
        return F.normalize(z, dim=-1) if normalize else z

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-length image and text embeddings, (B, embed_dim) each."""
        return self.encode_image(pixel_values), self.encode_text(input_ids)
