"""Typed configuration: pydantic v2 models (frozen, unknown keys forbidden) loaded from YAML."""
from .base import StrictModel, config_to_dict, field_paths, read_yaml
from .compose import Layer, compose, load_config, parse_config
from .train import TrainConfig

__all__ = ["StrictModel", "TrainConfig", "Layer", "compose", "load_config", "parse_config",
           "config_to_dict", "field_paths", "read_yaml"]
