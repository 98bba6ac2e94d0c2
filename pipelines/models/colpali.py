"""colpali-engine classes, imported without importing every model family.

``import colpali_engine`` runs ``colpali_engine/__init__.py``, which imports ``colpali_engine.models``,
which imports all nine model families (PaliGemma, Qwen2/2.5/3/3.5, Idefics3, ModernVBERT, Gemma3,
Qwen-Omni) and through them much of transformers and torch's compiler stack: 10-25 s of CPU that
every process that pools or embeds would pay (each Ray actor, each job). Here the two umbrella
packages are registered as *bare* packages (their ``__path__`` set, their ``__init__`` not run), so
importing one submodule imports only that submodule and what it needs: the pooler needs torch and
scipy, a model family its own transformers model. The classes are the library's own, unchanged.

A process that later imports ``colpali_engine.models`` by name still gets the whole package (its
``__init__`` runs then, reusing the family modules already imported); only the top-level
``colpali_engine`` namespace stays bare (it re-exports nothing the pipeline uses).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

_UMBRELLAS = ("colpali_engine",)


def _bare(package: str) -> None:
    """Make ``package`` importable as a namespace for its submodules without running its ``__init__``."""
    if package in sys.modules:
        return
    spec = importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        msg = f"{package} is not installed (pip/uv install colpali-engine)"
        raise ImportError(msg)
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module


def _import(module: str) -> ModuleType:
    for package in _UMBRELLAS:
        _bare(package)
    return importlib.import_module(module)


def token_pooler_class() -> type:
    """colpali-engine's ``HierarchicalTokenPooler``."""
    return _import("colpali_engine.compression.token_pooling").HierarchicalTokenPooler


def model_classes(family: str, model_class: str, processor_class: str) -> tuple[type, type]:
    """``(model class, processor class)`` from one family subpackage, e.g. ``("qwen2", "ColQwen2",
    "ColQwen2Processor")``; only that family is imported (unless ``colpali_engine.models`` already was)."""
    models = sys.modules.get("colpali_engine.models")
    if models is not None and hasattr(models, model_class):
        return getattr(models, model_class), getattr(models, processor_class)
    _bare("colpali_engine")
    bare_models = "colpali_engine.models" not in sys.modules
    _bare("colpali_engine.models")
    try:
        package = importlib.import_module(f"colpali_engine.models.{family}")
    finally:
        if bare_models:
            # Forget the bare umbrella: a later ``import colpali_engine.models`` then runs its
            # ``__init__`` for real (reusing the family modules already imported).
            sys.modules.pop("colpali_engine.models", None)
    return getattr(package, model_class), getattr(package, processor_class)
