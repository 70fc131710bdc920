"""The model kinds a checkpoint can hold, one row each: `model_config.json`'s `architecture` -> its config
class and its module (the decoder when the key is absent). A kind's classes are imported when it is asked for."""

from __future__ import annotations

import torch

from foundry.errors import CheckpointError


def _decoder():
    from foundry.model.llama import Llama, LlamaConfig

    return LlamaConfig, Llama


def _encoder():
    from foundry.model.encoder import Encoder, EncoderConfig

    return EncoderConfig, Encoder


def _classifier():
    from foundry.model.classifier import Classifier, ClassifierConfig

    return ClassifierConfig, Classifier


def _clip():
    from foundry.model.clip import Clip, ClipConfig

    return ClipConfig, Clip


MODEL_KINDS = {  # architecture -> () -> (config class, module class)
    None: _decoder,  # the decoder's model_config.json has no "architecture"
    "bert": _encoder,
    "classifier": _classifier,
    "clip": _clip,
}


def config_from_dict(data: dict):
    """A model config from model_config.json: the decoder's, the encoder's (`architecture: bert`), a
    sequence classifier's (`architecture: classifier`) or an image-text model's (`architecture: clip`)."""
    kind = data.get("architecture") if isinstance(data, dict) else None
    config_class, _ = MODEL_KINDS.get(kind, _decoder)()  # an unknown kind: the decoder's config refuses the key
    return config_class.from_dict(data)


def model_from_config(config) -> torch.nn.Module:
    """The module a config describes (weights freshly initialised)."""
    kind = getattr(config, "architecture", None)
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"model config of architecture {kind!r}: not one of "
                              f"{', '.join(repr(k) for k in MODEL_KINDS)}")
    _, model_class = MODEL_KINDS[kind]()
    return model_class(config)
