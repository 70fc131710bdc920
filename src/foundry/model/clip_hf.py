"""`foundry export --format hf` for a CLIP model: a directory `CLIPModel` and `CLIPProcessor` load offline.

Our parameter names are `CLIPModel`'s, so export is a config mapping and a safetensors copy; the SigLIP
bias, which `CLIPModel` lacks, is left out (no embedding depends on it). The processor files say how
images are prepared (`preprocessor_config.json`, `CLIPImageProcessor`: shortest edge to `image_size`,
bicubic, centre crop, rescale, normalise with the mean and std handed in, which are foundry's own
preprocessing's) and how captions are tokenised (the tokenizer's own files).
"""

from __future__ import annotations

from pathlib import Path

from foundry.model.clip import Clip, ClipConfig
from foundry.utils.io import atomic_directory, atomic_write_json


def hf_clip_config(config: ClipConfig) -> dict:
    """transformers' `CLIPConfig` as a dict."""
    text = {
        "model_type": "clip_text_model", "vocab_size": config.vocab_size, "hidden_size": config.text_width,
        "intermediate_size": config.text_width * config.mlp_ratio, "num_hidden_layers": config.text_layers,
        "num_attention_heads": config.text_heads, "max_position_embeddings": config.text_len,
        "hidden_act": config.hidden_act, "layer_norm_eps": config.norm_eps, "projection_dim": config.embed_dim,
        "bos_token_id": config.bos_id, "eos_token_id": config.eos_id, "pad_token_id": config.pad_id,
        "attention_dropout": 0.0, "initializer_range": config.init_std,
    }
    vision = {
        "model_type": "clip_vision_model", "hidden_size": config.vision_width,
        "intermediate_size": config.vision_width * config.mlp_ratio, "num_hidden_layers": config.vision_layers,
        "num_attention_heads": config.vision_heads, "num_channels": config.num_channels,
        "image_size": config.image_size, "patch_size": config.patch_size, "hidden_act": config.hidden_act,
        "layer_norm_eps": config.norm_eps, "projection_dim": config.embed_dim, "attention_dropout": 0.0,
        "initializer_range": config.init_std,
    }
    return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": config.embed_dim,
            "logit_scale_init_value": config.logit_scale_init, "text_config": text, "vision_config": vision,
            "torch_dtype": "float32"}


def image_processor_config(config: ClipConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> dict:
    size = config.image_size
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": size},
            "resample": 3, "do_center_crop": True, "crop_size": {"height": size, "width": size},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(mean),
            "image_std": list(std), "do_convert_rgb": True}


def export_clip_hf(model: Clip, tokenizer, out_dir: str | Path, image_mean: tuple[float, ...],
                   image_std: tuple[float, ...], overwrite: bool = False) -> Path:
    """Write `out_dir` (atomically): config.json, model.safetensors, preprocessor_config.json, the tokenizer."""
    from safetensors.torch import save_file

    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items() if k != "logit_bias"}
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", hf_clip_config(model.config))
        atomic_write_json(tmp / "preprocessor_config.json", image_processor_config(model.config, image_mean, image_std))
        atomic_write_json(tmp / "processor_config.json", {"processor_class": "CLIPProcessor"})
        tokenizer.save(tmp, model_max_length=model.config.text_len)
    return Path(out_dir)
