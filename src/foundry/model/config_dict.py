"""The dict form of a model config dataclass, as checkpoints and run records store it."""

from __future__ import annotations

from dataclasses import asdict, fields

from foundry.errors import ConfigError


class ConfigDict:
    """`to_dict` / `from_dict` for a config dataclass: a stored key the class does not know is a one-line error
    (a checkpoint from a newer foundry, or a hand-edited file), never silently dropped."""

    config_name = "model config"  # how the error names what it read

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"{cls.config_name}: unknown keys {sorted(unknown)}")
        return cls(**data)
