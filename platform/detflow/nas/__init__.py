"""SpineNet architecture search (SpineNet §3–4) with Optuna; proxy trainings run on Ray Train."""
from .config import NasConfig
from .runner import NasResult, find_nas, load_nas_config, run_nas

__all__ = ["NasConfig", "NasResult", "run_nas", "load_nas_config", "find_nas", "nas"]


def nas(config: str | None = None, *, name: str | None = None, resume: bool = False, **overrides) -> NasResult:
    """Run a NAS from a YAML path (``config``) or resume one by ``name``.

    >>> import detflow
    >>> result = detflow.nas("workflows/nas/spinenet_proxy_nas.yaml")  # doctest: +SKIP
    >>> result.best_spec_path  # doctest: +SKIP
    """
    if resume:
        cfg, config_dir = find_nas(name or "")
        return run_nas(cfg, config_dir=config_dir, resume=True)
    if config is None:
        raise ValueError("detflow.nas: give a NAS YAML path, or name=… with resume=True")
    sets = [f"{k}={v}" for k, v in overrides.items()]
    cfg, config_dir = load_nas_config(config, sets)
    return run_nas(cfg, config_dir=config_dir)


def _load_and_check(path, overrides):
    """``detflow config validate`` for NAS files: the config and its base spinenet training config."""
    from .runner import _base_config

    cfg, config_dir = load_nas_config(path, list(overrides))
    _base_config(cfg, config_dir)
    return cfg


def _register_kind() -> None:
    from ..config.kinds import register_config_kind

    register_config_kind("nas", NasConfig, lambda d: "proxy" in d or ("base" in d and "space" not in d
                         and "steps" not in d and "model" not in d), priority=20, load=_load_and_check)


_register_kind()


class _CallableModule(__import__("types").ModuleType):
    """``detflow.nas`` is both this package and the SDK function: ``detflow.nas("nas.yaml")``."""

    def __call__(self, *args, **kwargs) -> NasResult:
        return nas(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
