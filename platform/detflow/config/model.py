"""The ``model:`` section of a training config, generated from each family's typed options.

``ModelConfig`` is a pydantic union discriminated on the family of ``model.name`` (looked up in
the ``detmodels`` registry). One frozen, ``extra="forbid"`` model per family is generated from its
options dataclasses (fields, types, defaults); the dataclasses' ``__post_init__`` stays the one
rule for every value. So for a ``yolov6_n`` config::

    model: {name: yolov6_n, assigner: {tal_topk: 9}}            # ok
    model: {name: yolov6_n, assigner: {soft_center_alpha: 5}}   # refused before anything runs:
    train.yaml: model.assigner.soft_center_alpha: unknown key; expected one of: tal_topk, tal_alpha, …

(errors are located without the union's tag by ``config.base``'s formatter, which lists the keys of
the family's own section).

Sections not written take the *variant's* defaults (e.g. ``yolov6_m``'s ``head.reg_max`` 16), so a
validated config (and its dump) always holds the values the model is built with.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from typing import Annotated, Any, ClassVar, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, PositiveInt, Tag,
                      create_model, field_validator, model_validator)

import detmodels
from detmodels import OptionError, options_from_dict, options_to_dict

from .base import StrictModel, field_error

__all__ = ["ModelConfig", "ModelConfigBase", "model_config_class", "model_family_classes"]

UNKNOWN_TAG = "unknown"
PLAIN_TAG = "plain"


class ModelConfigBase(StrictModel):
    """Fields every family shares: which registered detector, its class count, a start checkpoint."""

    name: str
    num_classes: PositiveInt | None = Field(None, description="default: the dataset's category count")
    pretrained: str | None = Field(None, description=(
        "weights to start from: `official` (the variant's official COCO release, pulled once into "
        "$DETFLOW_HOME/weights, see docs/weights.md), `models:/NAME/VERSION` or `models:/NAME@ALIAS` "
        "(a registered MLflow model), or a detflow checkpoint directory (path or s3:// URI); a "
        "checkpoint with another class count keeps all but the class-dependent layers"))

    @classmethod
    def options_type(cls) -> type | None:
        """The family's options dataclass (None for a model without options)."""
        return None

    def options(self) -> Any:
        """The typed options (``detmodels.<Family>Options``) this config builds the model with."""
        opts_cls = self.options_type()
        if opts_cls is None:
            return None
        data = {name: getattr(self, name) for name in _option_fields(opts_cls)}
        return options_from_dict(opts_cls, _plain(data))

    def create_kwargs(self) -> dict[str, Any]:
        """Keywords of ``detmodels.create_model`` besides the name and class count."""
        opts = self.options()
        return {} if opts is None else {"options": opts}

    def build(self, num_classes: int):
        """``detmodels.create_model(name, num_classes, options=self.options(), …)``."""
        return detmodels.create_model(self.name, num_classes=num_classes, **self.create_kwargs())


class _UnknownModelConfig(ModelConfigBase):
    """Stands in for a name that is not registered: its only error is the name's, with a hint."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        known = detmodels.list_models()
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"a registered model name{hint}")


class _PlainModelConfig(ModelConfigBase):
    """A registered model whose builder takes no options (e.g. a test's tiny network)."""


class _FamilyModelConfig(ModelConfigBase):
    """Base of the generated family classes: variant defaults filled in, options checked once."""

    options_cls: ClassVar[type | None] = None

    @classmethod
    def options_type(cls) -> type | None:
        return cls.options_cls

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        return _fill_variant_defaults(data)

    @model_validator(mode="after")
    def _check_options(self) -> "_FamilyModelConfig":
        return _check_options(self)


class _SpineNetModelConfig(_FamilyModelConfig):
    """SpineNet adds ``spec``: a block-spec YAML for the ``spinenet`` entry (e.g. a NAS result)."""

    spec: str | None = Field(None, description="SpineNet block-spec YAML (model name 'spinenet')")

    @model_validator(mode="after")
    def _spec_entry(self) -> "_SpineNetModelConfig":
        """Only an entry whose builder takes ``spec=`` (``spinenet``) accepts one; the published
        variants are fixed specs."""
        if self.spec is not None and not detmodels.get_model_entry(self.name).takes_spec:
            raise field_error("ModelConfig", ("spec",), self.spec, "null: only the 'spinenet' entry takes a spec")
        return self

    def create_kwargs(self) -> dict[str, Any]:
        kwargs = super().create_kwargs()
        if self.spec:  # a stored spec (a NAS step's output) is read through a local copy
            from ..artifact_store import local_path

            kwargs["spec"] = str(local_path(self.spec))
        return kwargs


def _plain(value: Any) -> Any:
    """Pydantic section models → nested dicts (tuples kept)."""
    if isinstance(value, BaseModel):
        return {k: _plain(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _option_fields(opts_cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(opts_cls)]


def _section_class(annotation: Any) -> type | None:
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return annotation
    return next((a for a in typing.get_args(annotation) if isinstance(a, type) and dataclasses.is_dataclass(a)), None)


def _pydantic_fields(opts_cls: type) -> dict[str, Any]:
    """``{name: (type, default)}`` of an options dataclass; a nested section becomes its generated model."""
    hints = typing.get_type_hints(opts_cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(opts_cls):
        sub = _section_class(hints[f.name])
        if sub is not None:
            model = _pydantic_section(sub)
            doc = " ".join((sub.__doc__ or "").split())
            fields[f.name] = (model, Field(default_factory=model, description=doc or None))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            fields[f.name] = (hints[f.name], default)
    return fields


@functools.lru_cache(maxsize=None)
def _pydantic_section(opts_cls: type) -> type[BaseModel]:
    """A frozen, extra-forbidding pydantic model with ``opts_cls``'s fields, types and defaults."""
    model = create_model(f"{opts_cls.__name__}Config", __base__=StrictModel, __module__=__name__,
                         **_pydantic_fields(opts_cls))
    model.__doc__ = opts_cls.__doc__
    return _publish(model)


def _from_legacy_dump(data: dict) -> dict:
    """A ``model:`` section stored before options were typed (checkpoints' ``config.yaml``): it always
    carries ``extra: {}`` and ``head: {}``, and ``null`` for every knob left at its default. Those
    mean "the variant's default", so they are dropped; anything else stays and is validated."""
    if data.get("extra") != {}:
        return data
    out = {k: v for k, v in data.items() if k != "extra" and not (k == "head" and v == {})}
    if out.get("spec", "") is None:
        del out["spec"]
    for section in ("neck", "assigner"):
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if v is not None}
            if not out[section]:
                del out[section]
    return out


def _fill_variant_defaults(data: Any) -> Any:
    """Before validation: every options field the user did not write takes the variant's default."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return data
    data = _from_legacy_dump(data)
    try:
        entry = detmodels.get_model_entry(data["name"])
    except KeyError:
        return data
    if entry.default_options is None:
        return data
    return _deep_merge(options_to_dict(entry.default_options), data)


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        nested = isinstance(base.get(key), dict) and isinstance(value, dict)
        out[key] = _deep_merge(base[key], value) if nested else value
    return out


def _check_options(self: Any) -> Any:
    """After validation: build the options dataclasses, their ``__post_init__`` being the one rule."""
    try:
        self.options()
    except OptionError as exc:
        loc = tuple(exc.path.split(".")[1:])  # drop options_from_dict's "model" prefix
        raise field_error("ModelConfig", loc, exc.value, exc.expected) from None
    return self


@functools.lru_cache(maxsize=None)
def _family_class(family: str, opts_cls: type, with_spec: bool) -> type[ModelConfigBase]:
    """The generated ``model:`` config of one family (``with_spec``: SpineNet's ``spec`` field)."""
    base = _SpineNetModelConfig if with_spec else _FamilyModelConfig
    name = opts_cls.__name__.removesuffix("Options") + "ModelConfig"
    model = create_model(name, __base__=base, __module__=__name__, **_pydantic_fields(opts_cls))
    model.options_cls = opts_cls
    model.__doc__ = f"``model:`` of a {family} detector (options: ``detmodels.{opts_cls.__name__}``)."
    return _publish(model)


def _publish(model: type[BaseModel]) -> type[BaseModel]:
    """Make a generated class a global of this module, so that pickling (Ray task arguments) refers to
    it by name: a class pickled by value would be a different class in the worker, which pydantic's
    union serializer does not recognise."""
    existing = globals().get(model.__name__)
    if existing is not None and existing is not model:
        raise RuntimeError(f"two generated config classes are named {model.__name__}")
    model.__qualname__ = model.__name__
    globals()[model.__name__] = model
    return model


def model_family_classes() -> dict[str, type[ModelConfigBase]]:
    """``{family: generated ModelConfig class}`` for every family in the ``detmodels`` registry."""
    out: dict[str, type[ModelConfigBase]] = {}
    for name in detmodels.list_models():
        entry = detmodels.get_model_entry(name)
        if entry.options is not None:
            out[entry.family] = _family_class(entry.family, entry.options, entry.family == "spinenet")
    return out


def model_config_class(model_name: str) -> type[ModelConfigBase]:
    """The ``model:`` config class of ``model_name`` (e.g. for ``field_paths(cls, "model.")``).

    Raises ``KeyError`` with a did-you-mean hint for an unregistered name.
    """
    entry = detmodels.get_model_entry(model_name)
    if entry.options is None:
        return _PlainModelConfig
    return _family_class(entry.family, entry.options, entry.family == "spinenet")


def _tag(value: Any) -> str:
    """Discriminator: the registry family of ``name`` (``unknown`` / ``plain`` when it has none)."""
    if isinstance(value, ModelConfigBase):
        value = {"name": value.name}
    name = value.get("name") if isinstance(value, dict) else None
    if not isinstance(name, str):
        return UNKNOWN_TAG
    try:
        entry = detmodels.get_model_entry(name)
    except KeyError:
        return UNKNOWN_TAG
    return entry.family if entry.options is not None else PLAIN_TAG


def _family_classes_by_tag() -> dict[str, type[ModelConfigBase]]:
    return {**model_family_classes(), PLAIN_TAG: _PlainModelConfig, UNKNOWN_TAG: _UnknownModelConfig}


def _union() -> Any:
    members = tuple(Annotated[cls, Tag(tag)] for tag, cls in _family_classes_by_tag().items())
    return Annotated[Union[members], Discriminator(_tag)]  # type: ignore[valid-type]


ModelConfig = _union()
"""Type of ``TrainConfig.model``: one generated class per family, chosen by ``name``'s family."""
