"""The torch-free catalog (:mod:`detmodels.catalog`) and the model code agree for every variant.

``import detmodels`` and every registry lookup stay free of torch (fresh interpreter); importing every
family's model code registers nothing more and changes no entry; each variant built (meta device)
has its entry's family and task, its builder is a family build function, and ``takes_spec`` says
whether that function takes ``spec=``.
"""
from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
import textwrap

import pytest
import torch

import detmodels
from detmodels import options_to_dict
from detmodels.catalog import FAMILY_MODULES
from detmodels.registry import LazyBuilder

ALL = detmodels.list_models()

# Prints every entry as plain data, then the torch modules loaded, first from the catalog alone and
# again after importing every family's model code (which must register nothing more).
SCRIPT = textwrap.dedent('''
    import importlib, json, sys
    import detmodels
    from detmodels.catalog import FAMILY_MODULES

    def entries():
        return {n: [e.family, e.task, e.input_size, e.size, e.recipe, e.options.__qualname__,
                    detmodels.options_to_dict(e.default_options), e.takes_spec, e.builder.target]
                for n in detmodels.list_models() for e in [detmodels.get_model_entry(n)]}

    before = entries()
    torch_free = "torch" not in sys.modules
    for module in FAMILY_MODULES:
        importlib.import_module(module)
    print(json.dumps({"before": before, "torch_free": torch_free, "after": entries()}))
''')


def _entry_data(name: str) -> list:
    e = detmodels.get_model_entry(name)
    return [e.family, e.task, e.input_size, e.size, e.recipe, e.options.__qualname__,
            options_to_dict(e.default_options), e.takes_spec, e.builder.target]


def test_catalog_needs_no_torch_and_family_code_registers_nothing_more():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch_free"]
    assert result["before"] == result["after"] == {n: json.loads(json.dumps(_entry_data(n))) for n in ALL}


def test_torch_backed_names_are_lazy_but_listed():
    for name in ("Detector", "create_model", "reparameterize_model", "count_params", "Detections"):
        assert name in detmodels.__all__ and name in dir(detmodels)
    from detmodels import Detector, reparameterize_model  # PEP 562 __getattr__

    assert Detector is importlib.import_module("detmodels.base").Detector
    assert reparameterize_model is importlib.import_module("detmodels.reparam").reparameterize_model
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        detmodels.Nope  # noqa: B018


@pytest.mark.parametrize("name", ALL)
def test_built_model_agrees_with_its_catalog_entry(name):
    entry = detmodels.get_model_entry(name)
    assert isinstance(entry.builder, LazyBuilder)
    module, _, _ = entry.builder.target.partition(":")
    assert module in FAMILY_MODULES
    function = entry.builder.resolve()
    assert entry.takes_spec == ("spec" in inspect.signature(function).parameters)
    with torch.device("meta"):
        model = detmodels.create_model(name, num_classes=3)
    assert (model.family, model.task) == (entry.family, entry.task)
    assert type(model).__module__ == module
