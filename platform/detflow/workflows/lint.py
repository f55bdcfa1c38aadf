"""Check a workflow before anything runs (Metaflow's ``lint`` is the model): one short function per
rule, each error names the file, the YAML line, the step and the fix::

    wf.yaml:14: step 'distill': `teacher: train` names a step that is not upstream; fix: add 'train' to needs

:func:`load_workflow` reads the YAML with a ``yaml.SafeLoader`` subclass that records line numbers,
applies ``--set`` overrides, resolves relative paths against the file's directory, runs every rule
and returns the validated :class:`~detflow.workflows.schema.Workflow` (or raises ``ConfigError``
listing every problem).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml
from pydantic import ValidationError

from ..config.base import (DuplicateKeyError, UniqueKeyLoader, format_validation_error, load_unique, parse_override,
                           reject_duplicate_keys, set_dotted)
from ..config.kinds import check_kind, read_user_config
from ..errors import ConfigError
from ..paths import resolve_path
from ..weights.resolve import is_reference
from .kinds import StepKind, ref_values, step_kinds
from .schema import Defaults, Step, Workflow

__all__ = ["LintError", "LineLoader", "UniqueKeyLoader", "DuplicateKeyError", "lint", "load_workflow", "parse_workflow", "RULES", "apply_workflow_overrides"]

TOP_KEYS = set(Workflow.model_fields)
STEP_KEYS = {f.alias or n for n, f in Step.model_fields.items()}
PATH_KEYS = {"annotations", "images", "config", "spec", "pretrained"}


class LineDict(dict):
    """A mapping that remembers its line and its keys' lines (1-based)."""

    line: int = 0
    key_lines: dict

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class LineLoader(UniqueKeyLoader):
    """:class:`UniqueKeyLoader` whose mappings are :class:`LineDict` with line numbers."""


def _construct_mapping(loader: LineLoader, node: yaml.MappingNode) -> LineDict:
    reject_duplicate_keys(loader, node)
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass(frozen=True)
class LintError:
    line: int
    step: str | None
    message: str
    fix: str = ""

    def format(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        who = f" step {self.step!r}:" if self.step else ""
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{where}:{who} {self.message}{fix}"


def _line(node: Any, key: str | None = None) -> int:
    if isinstance(node, LineDict):
        return node.line_of(key) if key else node.line
    return 0


def _close(word: str, options: Iterable[str]) -> str:
    match = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _steps(raw: dict) -> list[dict]:
    steps = raw.get("steps")
    return [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []


def _ids(raw: dict) -> dict[str, dict]:
    return {s["id"]: s for s in _steps(raw) if isinstance(s.get("id"), str)}


def _kind(step: dict) -> StepKind | None:
    return step_kinds().get(step.get("uses")) if isinstance(step.get("uses"), str) else None


def _needs(step: dict) -> list[str]:
    needs = step.get("needs") or []
    return [needs] if isinstance(needs, str) else [n for n in needs if isinstance(n, str)]


def _with(step: dict) -> dict:
    value = step.get("with")
    return value if isinstance(value, dict) else {}


# ----------------------------------------------------------------------------------------- rules
def rule_top_level(raw: dict) -> list[LintError]:
    """Unknown top-level keys, missing ``name``/``steps``, ``steps`` not a list of mappings."""
    errors = [LintError(_line(raw, k), None, f"unknown top-level key {k!r}{_close(k, TOP_KEYS)}",
                        f"use one of {', '.join(sorted(TOP_KEYS))}") for k in raw if k not in TOP_KEYS]
    for key in ("name", "steps"):
        if key not in raw:
            errors.append(LintError(1, None, f"missing required key {key!r}", f"add `{key}:` at the top level"))
    steps = raw.get("steps")
    if "steps" in raw and (not isinstance(steps, list) or not steps or not all(isinstance(s, dict) for s in steps)):
        errors.append(LintError(_line(raw, "steps"), None, "`steps` must be a non-empty list of mappings",
                                "write each step as `- {id: NAME, uses: KIND, ...}`"))
    return errors


def rule_step_ids(raw: dict) -> list[LintError]:
    """Every step has a unique ``id``."""
    errors, seen = [], set()
    for step in _steps(raw):
        sid = step.get("id")
        if not isinstance(sid, str):
            errors.append(LintError(_line(step), None, "step without an `id`", "add `id: NAME` to the step"))
        elif sid in seen:
            errors.append(LintError(_line(step, "id"), sid, "duplicate step id", "give each step a unique id"))
        seen.add(sid)
    return errors


def rule_unknown_kinds(raw: dict) -> list[LintError]:
    """``uses`` names a registered step kind."""
    kinds = step_kinds()
    errors = []
    for step in _steps(raw):
        uses = step.get("uses")
        if uses is None:
            errors.append(LintError(_line(step), step.get("id"), "missing `uses`",
                                    f"add `uses: KIND` ({', '.join(sorted(kinds))})"))
        elif uses not in kinds:
            errors.append(LintError(_line(step, "uses"), step.get("id"), f"unknown step kind {uses!r}{_close(uses, kinds)}",
                                    f"use one of {', '.join(sorted(kinds))}"))
    return errors


def rule_unknown_keys(raw: dict) -> list[LintError]:
    """Step keys and ``with`` keys are known for the step's kind."""
    errors = []
    for step in _steps(raw):
        for key in step:
            if key not in STEP_KEYS:
                errors.append(LintError(_line(step, key), step.get("id"), f"unknown key {key!r}{_close(key, STEP_KEYS)}",
                                        f"use one of {', '.join(sorted(STEP_KEYS))}"))
        kind = _kind(step)
        if kind is None:
            continue
        allowed = set(kind.params.model_fields)
        for key in _with(step):
            if _RENAMED.get(key) in allowed:
                errors.append(LintError(_line(step["with"], key), step.get("id"),
                                        f"`with` key {key!r} is now {_RENAMED[key]!r} (the TrainConfig section name)",
                                        f"rename it to `{_RENAMED[key]}:`"))
            elif key not in allowed:
                errors.append(LintError(_line(step["with"], key), step.get("id"),
                                        f"unknown `with` key {key!r} for kind {kind.name!r}{_close(key, allowed)}",
                                        f"use one of {', '.join(sorted(allowed))}"))
    return errors


# ``with`` keys renamed to TrainConfig's section names
_RENAMED = {"checkpointing": "checkpoint"}


def rule_needs_exist(raw: dict) -> list[LintError]:
    """``needs`` names existing steps (and not the step itself)."""
    ids = _ids(raw)
    errors = []
    for step in _steps(raw):
        for need in _needs(step):
            if need not in ids:
                errors.append(LintError(_line(step, "needs"), step.get("id"), f"needs {need!r}, which is not a step{_close(need, ids)}",
                                        f"use one of {', '.join(ids)} or remove it"))
            elif need == step.get("id"):
                errors.append(LintError(_line(step, "needs"), need, "a step cannot need itself", f"remove {need!r} from needs"))
    return errors


def rule_cycles(raw: dict) -> list[LintError]:
    """The ``needs`` graph is acyclic; a cycle is reported once with its path."""
    ids = _ids(raw)
    graph = {sid: [n for n in _needs(s) if n in ids and n != sid] for sid, s in ids.items()}
    state: dict[str, int] = {}
    errors: list[LintError] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                errors.append(LintError(_line(ids[node], "needs"), node, f"cycle in needs: {' -> '.join(cycle)}",
                                        f"remove {nxt!r} from the needs of {node!r} (or another edge of the cycle)"))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for sid in ids:
        if sid not in state:
            visit(sid, [sid])
    return errors


def ancestors(raw: dict) -> dict[str, set[str]]:
    """Transitive ``needs`` of every step (cycle-safe)."""
    ids = _ids(raw)
    out: dict[str, set[str]] = {}

    def walk(sid: str, seen: set[str]) -> set[str]:
        if sid in out:
            return out[sid]
        acc: set[str] = set()
        for need in _needs(ids[sid]):
            if need in ids and need not in seen:
                acc |= {need} | walk(need, seen | {need})
        out[sid] = acc
        return acc

    for sid in ids:
        walk(sid, {sid})
    return out


def _data_refs(raw: dict, step: dict) -> list[tuple[str, str, Any]]:
    """References of a step, counting ``defaults.data: STEP`` for kinds that take data."""
    kind = _kind(step)
    refs = ref_values(_with(step), kind.params) if kind else []
    defaults_data = (raw.get("defaults") or {}).get("data") if isinstance(raw.get("defaults"), dict) else None
    if kind and "data" in kind.params.model_fields and "data" not in _with(step) and isinstance(defaults_data, str):
        from .kinds import Ref
        refs.append(("defaults.data", defaults_data, Ref("dataset")))
    return refs


def rule_refs_upstream(raw: dict) -> list[LintError]:
    """An input reference (``teacher: train``) names a step upstream of this one."""
    ids, anc = _ids(raw), ancestors(raw)
    errors = []
    for step in _steps(raw):
        sid = step.get("id")
        if sid not in ids:
            continue
        for field, target, _ in _data_refs(raw, step):
            line = _line(step["with"], field) if field in _with(step) else _line(step)
            if target not in ids:
                errors.append(LintError(line, sid, f"`{field}: {target}` names no step{_close(target, ids)}",
                                        f"use the id of an upstream step ({', '.join(sorted(anc[sid])) or 'none yet'})"))
            elif target not in anc[sid]:
                errors.append(LintError(line, sid, f"`{field}: {target}` names a step that is not upstream",
                                        f"add {target!r} to the needs of {sid!r}"))
    return errors


def rule_ref_outputs(raw: dict) -> list[LintError]:
    """The referenced step's kind produces what the field takes (a checkpoint, an ONNX file …)."""
    ids = _ids(raw)
    errors = []
    for step in _steps(raw):
        for field, target, ref in _data_refs(raw, step):
            kind = _kind(ids[target]) if target in ids else None
            if kind is not None and not set(ref.produces) & kind.produces:
                errors.append(LintError(_line(step.get("with") or step, field), step.get("id"),
                                        f"`{field}: {target}` needs a {' or '.join(ref.produces)}, but a {kind.name!r} step "
                                        f"produces {', '.join(sorted(kind.produces)) or 'nothing'}",
                                        f"reference a step that produces a {ref.produces[0]}"))
    return errors


def rule_required_inputs(raw: dict) -> list[LintError]:
    """Kinds that need a dataset / model get one from ``with`` or ``defaults``."""
    defaults = raw.get("defaults") if isinstance(raw.get("defaults"), dict) else {}
    errors = []
    for step in _steps(raw):
        kind, params = _kind(step), _with(step)
        if kind is None:
            continue
        from_base = bool(params.get("config") or params.get("config_from"))
        if kind.needs_data and not (params.get("data") or defaults.get("data") or from_base):
            errors.append(LintError(_line(step), step.get("id"), f"a {kind.name!r} step needs a dataset",
                                    "set `with: {data: SYNTH_STEP}` or `defaults: {data: {train: …, val: …}}`"))
        if kind.needs_model and not (params.get("model") or defaults.get("model") or from_base):
            errors.append(LintError(_line(step), step.get("id"), f"a {kind.name!r} step needs a model",
                                    "set `with: {model: NAME}` or `defaults: {model: NAME}`"))
    return errors


def rule_param_types(raw: dict) -> list[LintError]:
    """Each step's fields and ``with`` values have the right types (pydantic, per kind)."""
    errors = []
    for step in _steps(raw):
        if _kind(step) is None or not isinstance(step.get("id"), str):
            continue
        known = {k: v for k, v in step.items() if k in STEP_KEYS}
        known["with"] = {k: v for k, v in _with(step).items() if k in _kind(step).params.model_fields}
        try:
            Step.model_validate(known)
        except ValidationError as exc:
            for text in format_validation_error(exc, "", Step):
                text = text.removeprefix(": ").replace("with_.", "with.")
                field = text.split(".")[0].split(":")[0]
                errors.append(LintError(_line(step, field), step["id"], text,
                                        "see `detflow run --help` and the kind's fields in docs"))
    return errors


def rule_defaults(raw: dict) -> list[LintError]:
    """``defaults`` validates (model name, scaling, recipe …)."""
    defaults = raw.get("defaults")
    if defaults is None:
        return []
    try:
        Defaults.model_validate(defaults)
    except ValidationError as exc:
        return [LintError(_line(raw, "defaults"), None, text.removeprefix(": "), "fix the `defaults` section")
                for text in format_validation_error(exc, "", Defaults, root="defaults")]
    return []


def rule_storage(raw: dict) -> list[LintError]:
    """``defaults.storage`` is a local path or an object-store URL that can work here: a known
    scheme, a bucket, and the credential variables a custom S3 endpoint needs (names only)."""
    from ..artifact_store import check_storage_url
    from ..storage import redact

    defaults = raw.get("defaults")
    url = defaults.get("storage") if isinstance(defaults, dict) else None
    problem = check_storage_url(url) if isinstance(url, str) else None
    if problem is None:
        return []
    return [LintError(_line(defaults, "storage"), None, f"defaults.storage: {redact(url)!r}: {problem}",
                      "use a local/shared path or s3://BUCKET/PREFIX (gs://, hdfs://, abfs:// also work)")]


def _model_names(raw: dict, step: dict) -> list[str]:
    """The model a train-like step trains: ``with.model``, ``defaults.model`` or its ``config:`` file's."""
    defaults = raw.get("defaults") if isinstance(raw.get("defaults"), dict) else {}
    for model in (_with(step).get("model"), defaults.get("model")):
        name = model.get("name") if isinstance(model, dict) else model
        if isinstance(name, str):
            return [name]
    config = _with(step).get("config")
    if isinstance(config, str) and Path(config).is_file():
        from ..config.base import read_yaml

        try:
            model = (read_yaml(config) or {}).get("model")
        except (ConfigError, AttributeError):
            return []  # the step reports its config file when it runs
        name = model.get("name") if isinstance(model, dict) else None
        return [name] if isinstance(name, str) else []
    return []


def rule_search_space(raw: dict) -> list[LintError]:
    """A sweep step's ``space`` names only fields of its model's family (the check ``detflow sweep``
    makes before Ray starts: :func:`detflow.tune.space.validate_space_paths`)."""
    from ..tune.config import ParamSpec, SweepSearch
    from ..tune.space import space_model_names, validate_space_paths

    errors = []
    for step in _steps(raw):
        kind, space = _kind(step), _with(step).get("space")
        if kind is None or not issubclass(kind.params, SweepSearch) or not isinstance(space, dict):
            continue
        try:
            specs = {str(k): ParamSpec.model_validate(v if isinstance(v, dict) else {"fixed": v}) for k, v in space.items()}
        except ValidationError:
            continue  # rule_param_types reports the bad range
        base = _model_names(raw, step)
        names = [n for n in space_model_names(specs, base[0] if base else "") if n in _registered()]
        try:
            validate_space_paths(specs, "", names)
        except ConfigError as exc:
            for text in exc.errors:
                key = text.removeprefix(": space.").split(":", 1)[0]
                errors.append(LintError(_line(space, key), step.get("id"), text.removeprefix(": "),
                                        "search only fields of the model's family (see the listed fields)"))
    return errors


def _registered() -> set[str]:
    import detmodels

    return set(detmodels.list_models())


RULES: tuple[Callable[[dict], list[LintError]], ...] = (
    rule_step_ids, rule_unknown_kinds, rule_unknown_keys, rule_needs_exist, rule_cycles,
    rule_refs_upstream, rule_ref_outputs, rule_required_inputs, rule_param_types, rule_defaults, rule_storage,
    rule_search_space,
)


def lint(raw: Any) -> list[LintError]:
    """Every problem of a raw (YAML-loaded) workflow; empty when it is valid."""
    if not isinstance(raw, dict):
        return [LintError(1, None, "a workflow must be a mapping", "start the file with `name:` and `steps:`")]
    errors = rule_top_level(raw)
    if any("steps" in e.message for e in errors):
        return errors
    for rule in RULES:
        errors.extend(rule(raw))
    return sorted(errors, key=lambda e: e.line)


# -------------------------------------------------------------------------------------- loading
def apply_workflow_overrides(raw: dict, overrides: Iterable[str]) -> dict:
    """``--set steps.train.with.train.epochs=3`` (a step addressed by id) or ``--set defaults.image_size=256``."""
    import copy

    raw = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = raw
        if keys[0] == "steps" and len(keys) > 2:
            match = _ids(raw).get(keys[1])
            if match is None:
                raise ConfigError([f"--set {text}: no step {keys[1]!r}; steps: {', '.join(_ids(raw))}"])
            node, keys = match, keys[2:]
        set_dotted(node, keys, value)
    return raw


def _absolutize(node: Any, base: Path) -> Any:
    """Resolve relative file paths (``annotations``, ``images``, ``config`` …) against ``base``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in PATH_KEYS and isinstance(value, str) and "://" not in value and not is_reference(value):
                node[key] = str(resolve_path(value, base))
            elif key == "storage" and isinstance(value, str) and value and "://" not in value:
                node[key] = str(resolve_path(value, base))
            else:
                _absolutize(value, base)
    elif isinstance(node, list):
        for item in node:
            _absolutize(item, base)
    return node


def parse_workflow(raw: Any, source: str = "<workflow>", base_dir: str | Path | None = None,
                   overrides: Iterable[str] = ()) -> Workflow:
    """Lint and validate a raw workflow mapping; raise ConfigError with one line per problem."""
    overrides = list(overrides)
    if overrides and isinstance(raw, dict):
        raw = apply_workflow_overrides(raw, overrides)
    if base_dir is not None:  # first, so that the rules can read a step's config file
        raw = _absolutize(raw, Path(base_dir))
    errors = lint(raw)
    if errors:
        raise ConfigError([e.format(source) for e in errors])
    try:
        return Workflow.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, Workflow)) from None


def _safe_load_with_lines(text: str) -> Any:
    """``yaml.safe_load`` that also records each mapping's line (``LineLoader`` is a SafeLoader)."""
    return load_unique(text, LineLoader)


def load_workflow(path: str | Path, overrides: Iterable[str] = ()) -> Workflow:
    """Read, lint and validate a workflow YAML file (see module docstring)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        raw = _safe_load_with_lines(text)
    except DuplicateKeyError as exc:  # FILE:12: duplicate key 'epochs' (first at line 9)
        raise ConfigError([f"{path}:{exc.line}: {exc.problem}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError([f"{path}{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}"]) from None
    check_kind(raw, "workflow", str(path))  # a user file: `kind: workflow` required
    wf = parse_workflow(raw, str(path), path.parent.resolve(), overrides)
    _check_config_kinds(wf)
    return wf


def _check_config_kinds(wf: Workflow) -> None:
    """A step's ``config:`` is a user's train config file: it must carry ``kind: train`` too."""
    for step in wf.steps:
        config = getattr(step.with_, "config", None)
        if isinstance(config, str) and "://" not in config and Path(config).is_file():
            read_user_config(config, "train")
