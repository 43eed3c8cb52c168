"""The one-line errors that name a missing install extra."""

from __future__ import annotations

import pytest

from kdeploy.common import extras
from kdeploy.common.errors import UsageError


def test_every_command_names_an_extra_it_installs():
    for command, needed in extras.COMMAND_EXTRAS.items():
        assert needed and all(extra in extras.EXTRA_MODULES for extra in needed), command


def test_a_missing_module_names_the_extra(monkeypatch):
    monkeypatch.setitem(extras.EXTRA_MODULES, "serve", ("onnxruntime", "no_such_module_here"))
    with pytest.raises(UsageError, match=r"needs the serve extra: pip install 'kdeploy\[serve\]' "
                                         r"\(no_such_module_here not installed\)"):
        extras.require_extra("serve")


def test_tracing_without_the_sdk_names_the_tracing_extra(monkeypatch):
    extras.require_tracing_extra()  # the dev install has it
    monkeypatch.setitem(extras.EXTRA_MODULES, "tracing", ("no_such_package.sdk",))
    with pytest.raises(UsageError, match=r"pip install 'kdeploy\[tracing\]' \(no_such_package.sdk not installed\)"):
        extras.require_tracing_extra()
