"""Typed configuration: pydantic v2 models (frozen, unknown keys forbidden) loaded from YAML."""
from .base import (StrictModel, apply_overrides, config_to_dict, field_paths, load_config,
                   parse_config, read_yaml)
from .train import TrainConfig

__all__ = ["StrictModel", "TrainConfig", "load_config", "parse_config", "apply_overrides",
           "config_to_dict", "field_paths", "read_yaml"]
