"""One typed composition, one direction: ``compose(TrainConfig, base, *overlays) -> TrainConfig``.

Every layering of a training config goes through it — ``--set`` on ``detflow train`` / ``detflow
config validate``, workflow ``defaults`` and a step's ``with`` sections, sweep trials, NAS proxy
trials — and the result is validated once, by the config class::

    cfg = compose(TrainConfig, Layer(read_yaml("train.yaml"), "train.yaml"),
                  Layer({"train": {"epochs": 3}}, "step 'train' (with)"),
                  *set_layers(["model.assigner.tal_topk=9"], "train.yaml"))

Rules (each layer over the result of the layers below it):

- the base is a config or a mapping; an overlay is a mapping whose keys may be dotted
  (``{"train.epochs": 3}``) or nested, or a partly-set config, of which only the fields the user
  set count (``model_fields_set``, recursively: ``model_dump(exclude_unset=True)``);
- a mapping merges field by field into the section below; any other value (scalar, list, null)
  replaces it;
- changing the model's *family* (``rtmdet_tiny`` → ``yolov6_n``): an overlay that gives the model
  section as a mapping (``model: {name: yolov6_n, …}``) replaces the section below it, since the
  options of one family mean nothing to another; a dotted ``model.name`` (``--set``, a sweep space)
  that changes the family is refused when the layers below set family options, naming them, so a
  knob never silently moves between families;
- errors are one line each, ``SOURCE: dotted.path: expected …, got …``, where SOURCE is the layer
  that set the offending value (a file, ``--set KEY=VALUE``, a step id, a trial), else the base.
"""
from __future__ import annotations

import copy
from os import PathLike
from typing import Any, Iterable, Mapping, NamedTuple, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from .base import describe_value, format_error_line, parse_override, read_yaml

__all__ = ["Layer", "compose", "set_layers", "layer_values", "without_variant_defaults", "parse_config", "load_config"]

M = TypeVar("M", bound=BaseModel)
Path_ = tuple[str, ...]


class Layer(NamedTuple):
    """Values one source sets (a mapping, dotted or nested keys, or a partly-set config) and the
    source's name used in errors (``train.yaml``, ``--set train.epochs=3``, ``step 'train' (with)``)."""

    values: Mapping[str, Any] | BaseModel | None
    source: str


def set_layers(overrides: Iterable[str], source: str) -> list[Layer]:
    """One layer per ``--set KEY=VALUE`` (dotted key), named ``SOURCE (with --set KEY=VALUE)``."""
    layers = []
    for text in overrides:
        keys, value = parse_override(text)
        layers.append(Layer({".".join(keys): value}, f"{source} (with --set {text})"))
    return layers


def layer_values(values: Mapping[str, Any] | BaseModel | None) -> dict:
    """The values a layer sets: a mapping as is (deep-copied); of a config, the fields the user set
    (``exclude_unset``), less the model options equal to its variant's defaults (validation fills
    those in, so that they would otherwise travel to another variant with ``model.name``)."""
    if values is None:
        return {}
    if not isinstance(values, BaseModel):
        return copy.deepcopy(dict(values))
    data = values.model_dump(exclude_unset=True)
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("name"), str):
        data["model"] = without_variant_defaults(model)
    return data


def _checked(layer: Layer) -> dict:
    if layer.values is not None and not isinstance(layer.values, (Mapping, BaseModel)):
        raise ConfigError([f"{layer.source}: (top level): expected a mapping, got {describe_value(layer.values)}"])
    return layer_values(layer.values)


def compose(cls: type[M], base: Layer | Mapping[str, Any] | BaseModel | None, *overlays: Layer | Mapping | BaseModel) -> M:
    """``cls`` validated once from ``base`` with each overlay applied in order (see module docstring).

    Raises:
        ConfigError: one line per problem, naming the layer that set the offending value.
    """
    base_layer = base if isinstance(base, Layer) else Layer(base, "<config>")
    merger = _Merger(_checked(base_layer), base_layer.source)
    for i, overlay in enumerate(overlays):
        layer = overlay if isinstance(overlay, Layer) else Layer(overlay, f"<overlay {i + 1}>")
        merger.apply(_checked(layer), layer.source)
    if merger.errors:
        raise ConfigError(merger.errors)
    try:
        return cls.model_validate(merger.tree)
    except ValidationError as exc:
        raise ConfigError([format_error_line(err, merger.source_of(err["loc"]), cls) for err in exc.errors()]) from None


def parse_config(model_cls: type[M], data: Any, source: str = "<config>", overrides: Iterable[str] = ()) -> M:
    """``model_cls`` from the mapping ``data`` (named ``source`` in errors) with ``--set`` ``overrides``
    applied: :func:`compose` of ``data`` and one layer per override."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([f"{source}: (top level): expected a mapping, got {describe_value(data)}"])
    return compose(model_cls, Layer(data, source), *set_layers(overrides, source))


def load_config(model_cls: type[M], path: str | PathLike, overrides: Iterable[str] = ()) -> M:
    """Read YAML ``path`` (``yaml.safe_load``, repeated keys refused) and :func:`parse_config` it.

    Relative paths inside the config are left as written; callers resolve them against the
    config file's directory where that matters.
    """
    return parse_config(model_cls, read_yaml(path), str(path), overrides)


class _Merger:
    """The merged mapping and, for each leaf path an overlay set, the overlay's source."""

    def __init__(self, tree: dict, base_source: str):
        self.tree = tree
        self.base_source = base_source
        self.sources: dict[Path_, str] = {}
        self.errors: list[str] = []

    def apply(self, values: dict, source: str) -> None:
        for key, value in values.items():
            self._merge(tuple(str(key).split(".")), value, source)

    def _merge(self, path: Path_, value: Any, source: str) -> None:
        if path == ("model",) and isinstance(value, Mapping) and self._renames_model(value.get("name")):
            if self._changes_family(value.get("name")):
                self._set(path, {}, source)  # the overlay gives the whole model section of another family
        if isinstance(value, Mapping):
            if not isinstance(self._get(path), dict):
                self._set(path, {}, source)
            for key, sub in value.items():
                self._merge(path + tuple(str(key).split(".")), sub, source)
            return
        if path == ("model", "name") and self._renames_model(value) and self._changes_family(value):
            self._refuse_family_change(value, source)
        self._set(path, copy.deepcopy(value), source)

    def _get(self, path: Path_) -> Any:
        node: Any = self.tree
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    def _set(self, path: Path_, value: Any, source: str) -> None:
        node = self.tree
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[path[-1]] = value
        for known in [p for p in self.sources if p[:len(path)] == path]:
            del self.sources[known]  # a replaced section forgets who set its old leaves
        self.sources[path] = source

    def _renames_model(self, new_name: Any) -> bool:
        """True if ``new_name`` replaces another model name; the layers below then lose the values
        equal to the old variant's defaults (a validated config or its dump holds them), so that they
        do not travel to the new variant: ``yolov6_n``'s ``head`` to ``yolov6_m``, ``recipe.name:
        rtmdet`` of an ``rtmdet_tiny`` dump to ``yolov6_s``."""
        section = self._get(("model",))
        if not isinstance(new_name, str) or not isinstance(section, dict) or section.get("name") in (None, new_name):
            return False
        self.tree["model"] = without_variant_defaults(section)
        recipe = self._get(("recipe",))
        if isinstance(recipe, dict) and recipe.get("name") is not None and recipe["name"] == _default_recipe(section["name"]):
            del recipe["name"]  # the old model's default recipe (a full dump holds it): the new model's applies
        return True

    def _changes_family(self, new_name: Any) -> bool:
        old_name = self._get(("model", "name"))
        if not isinstance(new_name, str) or not isinstance(old_name, str) or new_name == old_name:
            return False
        old, new = _family(old_name), _family(new_name)
        return old is not None and new is not None and old != new

    def _refuse_family_change(self, new_name: str, source: str) -> None:
        """A dotted ``model.name`` into another family: refuse if the section below sets family options."""
        section = self._get(("model",)) or {}
        kept = _family_free_fields()
        options = sorted(k for k in section if k != "name" and k not in kept)
        if options:
            old_name = section.get("name")
            where = self.sources.get(("model", "name"), self.base_source)
            self.errors.append(
                f"{source}: model.name: {new_name!r} is a {_family(new_name)} model, but {where} sets "
                f"{_family(old_name)} options for {old_name!r} ({', '.join('model.' + k for k in options)}); "
                f"give the whole model section instead (e.g. --set 'model={{name: {new_name}}}' or "
                f"`model: {{name: {new_name}, …}}`), or remove those options")

    def source_of(self, loc: tuple) -> str:
        """The layer that set the value at pydantic error location ``loc`` (or an enclosing one)."""
        path, node = [], self.tree
        for part in loc:  # skip parts that are not keys of the data (union tags, validator names)
            if isinstance(node, dict) and part in node:
                path.append(part)
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                break
        for end in range(len(path), 0, -1):
            found = self.sources.get(tuple(path[:end]))
            if found is not None:
                return found
        inside = list(dict.fromkeys(src for p, src in self.sources.items() if path and p[:len(path)] == tuple(path)))
        return " and ".join(inside) if inside else self.base_source  # a section some overlay wrote into


def _family(model_name: Any) -> str | None:
    """The registered family of ``model_name`` (None for an unknown name: validation reports it)."""
    import detmodels

    try:
        return detmodels.get_model_entry(str(model_name)).family
    except KeyError:
        return None


def _default_recipe(model_name: str) -> str | None:
    import detmodels

    try:
        return detmodels.get_model_entry(model_name).recipe
    except KeyError:
        return None


def _family_free_fields() -> set[str]:
    """Model-section fields every family has (``name``, ``num_classes``, ``pretrained``): a family
    change carries them over."""
    from .model import ModelConfigBase

    return set(ModelConfigBase.model_fields)


def without_variant_defaults(model: dict) -> dict:
    """A validated ``model:`` section (a dump) less the option values equal to its variant's defaults
    (which validation fills in). Caveat: a value the user wrote equal to that default goes too, so it
    does not override a different value of a lower layer."""
    import detmodels

    try:
        defaults = detmodels.get_model_entry(model["name"]).default_options
    except KeyError:
        return model
    return model if defaults is None else _prune(model, detmodels.options_to_dict(defaults))


def _prune(data: dict, defaults: dict) -> dict:
    out = {}
    for key, value in data.items():
        if key not in defaults:
            out[key] = value
        elif isinstance(value, dict) and isinstance(defaults[key], dict):
            rest = _prune(value, defaults[key])
            if rest:
                out[key] = rest
        elif value != defaults[key] and not _same_sequence(value, defaults[key]):
            out[key] = value
    return out


def _same_sequence(a: Any, b: Any) -> bool:
    return isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)
