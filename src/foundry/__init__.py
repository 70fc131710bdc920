"""foundry: pretrain, adapt, align, evaluate and serve small language models."""

__version__ = "0.1.0"
