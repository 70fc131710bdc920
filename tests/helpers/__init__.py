"""Helpers the tests share, imported as `tests.helpers.<module>` (never one test module from another):

- serve_fixtures: a tiny model, tokenizer and checkpoint; a slow model; a uvicorn server in a thread
- train_data: generated corpora, datasets with token shards, tiny pretraining recipes
- posttrain: the post-training tests' tokenizer (foundry's specials), chats, a base checkpoint
- loop_fixtures: the training loop's fixed batch source, tiny model and one-step config
- continual_corpora: two generated languages and the continual/coverage tests' base model
- labelled_task: a two-topic classification task (finetune, transfer)
- eval_models: a tokenizer and a model that has memorised four facts (eval, bake-off, report)
- bakeoff_fixture: a blinded bake-off directory written without generating (the rating page)
- hf_models: a byte-level BPE with someone else's special tokens and chat template (import, families, GGUF)
- reliability: a workspace built by the real CLI and tiny pretrain/SFT/DPO recipes
- make_malformed: the malformed-input cases (also `python -m tests.helpers.make_malformed DIR`)
- clip_gather_worker: the torchrun worker of tests/train/test_clip_distributed.py (run by its path)
- files: write_jsonl, write_yaml
"""
