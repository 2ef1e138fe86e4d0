"""Registers pycodec with transformers (pycodec/hf.py) when transformers is imported, not before.

Importing transformers' quantizer registry costs seconds (2.6 s of a 3.6 s `import pycodec` on
the 2-core machine, 2026-11-30), which a user of the codec alone, or of a CLI command that reads
no model, should not pay. A program that loads models imports transformers anyway: registration
then runs right after transformers' own package has executed, before any call into it can
read a ``quant_method: "pycodec"`` config.
"""
from __future__ import annotations

import importlib.abc
import sys
import threading

_lock = threading.Lock()
_registered = False


def _register() -> None:
    global _registered
    with _lock:
        if _registered:
            return
        _registered = True
        try:
            from . import hf  # noqa: F401
        except ImportError:  # a transformers too old for out-of-tree quantizers: nothing to register
            pass


class _AfterTransformersImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: it wraps the loader of the package ``transformers`` that the other
    finders find, so that registration follows the package's execution. Leaves sys.meta_path
    once it has fired."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "transformers":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _remove_hook()
            _register()

        loader.exec_module = exec_then_register
        return spec


_hook = _AfterTransformersImport()


def _remove_hook() -> None:
    try:
        sys.meta_path.remove(_hook)
    except ValueError:
        pass


def register_with_transformers() -> None:
    """Register now if transformers is loaded, else when it is."""
    if "transformers" in sys.modules:
        _register()
    elif _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)
