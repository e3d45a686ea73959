"""The ``core`` package's import surface: public names load on first use, torch-free parts stay free."""

from __future__ import annotations

import subprocess
import sys

import core


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_torch_free_submodules_do_not_import_torch() -> None:
    # The worker imports core.memory before re-executing itself under jemalloc.
    code = (
        "import sys, core.memory, core.errors; print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    assert _run(code) == "False False"


def test_every_public_name_resolves() -> None:
    missing = [name for name in core.__all__ if getattr(core, name, None) is None]
    assert missing == []
    assert set(core.__all__) == set(core._EXPORTS) | {"extract_with"}  # the lazy table lists them all
    assert set(dir(core)) >= set(core.__all__)


def test_extract_stays_the_function_whatever_is_imported_first() -> None:
    # The function must not be shadowed by a submodule of the same name.
    code = (
        "import core, core.training, core.extraction; print(callable(core.extract), core.extract.__module__)"
    )
    assert _run(code) == "True core.extraction"
