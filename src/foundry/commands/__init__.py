"""The commands layer: argv parsing and `main` of every verb, over a core that takes typed arguments.

`foundry/cli.py` maps a verb to a function here; these functions parse flags, load and validate the
recipe, and call the library (`foundry.train.pretrain.run_pretrain(cfg)`, ...). No module under data/,
model/, train/, eval/ or serve/ imports this package or the command line (tests/package/test_layering.py).

A verb that reads a recipe lists every recipe key with its type, default and description under
`--help`, generated from the config model's pydantic `Field(description=...)`s (`recipe_keys_help`).
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from foundry.cli import ArgParser, make_parser


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation)).replace("NoneType", "null")
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return f"list[{_type_name(item)}]"
    return getattr(annotation, "__name__", str(annotation))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Config models nested in a field's type (`LoRASpec | None`, `list[MixtureEntry]`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _description(cls: type[BaseModel], name: str) -> str:
    """A field's description, or the one it had in a base config (a stage may only change the default)."""
    for base in cls.__mro__:
        field = getattr(base, "model_fields", {}).get(name)
        if field is not None and field.description:
            return field.description
    return ""


def recipe_keys(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) of every key a recipe for `cls` may hold."""
    rows = []
    for name, field in cls.model_fields.items():
        key = prefix + name
        nested = _models_in(field.annotation)
        if field.default is PydanticUndefined and field.default_factory is None:
            default = "required"
        elif isinstance(field.default, BaseModel) or (nested and field.default is not None):
            default = ""
        else:
            default = json.dumps(field.default)  # as YAML reads it: true, null, "cosine"
        rows.append((key, _type_name(field.annotation), default, _description(cls, name)))
        for model in nested:
            item = "[]." if typing.get_origin(field.annotation) is list else "."
            rows.extend(recipe_keys(model, key + item))
    return rows


def recipe_keys_help(cls: type[BaseModel]) -> str:
    """The `--help` epilog listing every recipe key (set in the YAML, or on the command line as key=value)."""
    rows = recipe_keys(cls)
    width = max(len(key) for key, *_ in rows)
    lines = ["recipe keys (in the YAML, or as key=value overrides):"]
    for key, type_name, default, description in rows:
        lines.append(f"  {key:<{width}}  {type_name}" + (f" = {default}" if default else ""))
        if description:
            lines.append(f"  {'':<{width}}    {description}")
    return "\n".join(lines)


def recipe_parser(verb: str, config_cls: type[BaseModel], example: str, config_help: str,
                  config_required: bool = True) -> ArgParser:
    """`foundry VERB --config RECIPE [--resume] [--overwrite] [key=value ...]`, the keys listed by --help."""
    p = make_parser(verb)
    p.epilog = recipe_keys_help(config_cls)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--config", required=config_required, help=config_help)
    p.add_argument("--resume", action="store_true", help="continue the run in out_dir from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start over in an out_dir that holds a run "
                   "(same as overwrite=true)")
    if "train" in config_cls.model_fields:
        p.add_argument("--profile", type=int, metavar="N", help="profile N training steps with torch.profiler: "
                       "operator table, trace and arithmetic share in RUN/profile/ (same as train.profile_steps=N)")
    p.add_argument("overrides", nargs="*", help=f"dotted.key=value overrides, e.g. {example}")
    return p


def load_recipe_args(config_cls: type[BaseModel], args: argparse.Namespace):
    """The validated config from --config, the overrides and --overwrite."""
    from foundry.config import load_config

    overrides = list(args.overrides) + (["overwrite=true"] if getattr(args, "overwrite", False) else [])
    if getattr(args, "profile", None):
        overrides.append(f"train.profile_steps={args.profile}")
    return load_config(config_cls, args.config, overrides)
