"""The checkpoint store: saving, loading, verifying and finding checkpoints, and picking the device.

It sits at library level, beside the model, so that evaluation, serving and Hugging Face import/export
read a model without importing training (the layering is checked by tests/package/test_layering.py). This package
is its public door; its parts, by concern:

- `files`: the checkpoint format (atomic directories, `meta.json` checksums, `step_*` and `best`, weights,
  model config and training state; the layout is in its docstring);
- `registry`: the model kinds a `model_config.json` can name (decoder, encoder, classifier, CLIP), one table;
- `devices`: the device, the model inside its wrappers, FSDP2 state loading;
- `rng`: RNG states that `torch.load(weights_only=True)` reads back;
- `imports`: transformers directories, .gguf files and their tokenizers, the recipe's chat template;
- `start`: `load_model` and `load_start`, the one door for a stage's starting model.
"""

from foundry.checkpoints.devices import is_sharded, load_model_state, pick_device, unwrap
from foundry.checkpoints.files import (CONFIG_FILE, META_FILE, MODEL_FILE, STATE_FILE, latest_checkpoint,
                                       load_model_config, load_train_state, load_weights, model_state_for_saving,
                                       read_meta, remove_checkpoint, resolve_checkpoint, save_checkpoint,
                                       step_checkpoints, verify_checkpoint, weights_fingerprint)
from foundry.checkpoints.imports import choose_chat_template, import_hf, load_tokenizer, use_foundry_template
from foundry.checkpoints.registry import MODEL_KINDS, config_from_dict, model_from_config
from foundry.checkpoints.rng import rng_state, set_rng_state
from foundry.checkpoints.start import (StartingModel, load_model, load_start, refuse_non_text,
                                       require_language_model)

__all__ = ["CONFIG_FILE", "META_FILE", "MODEL_FILE", "MODEL_KINDS", "STATE_FILE", "StartingModel",
           "choose_chat_template", "config_from_dict", "import_hf", "is_sharded", "latest_checkpoint",
           "load_model", "load_model_config", "load_model_state", "load_start", "load_tokenizer",
           "load_train_state", "load_weights", "model_from_config", "model_state_for_saving", "pick_device",
           "read_meta", "refuse_non_text", "remove_checkpoint", "require_language_model", "resolve_checkpoint",
           "rng_state", "save_checkpoint", "set_rng_state", "step_checkpoints", "unwrap", "use_foundry_template",
           "verify_checkpoint", "weights_fingerprint"]
