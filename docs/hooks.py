"""MkDocs hooks: the build fails (under ``--strict``) when a public name is not documented.

"Public" is every name in the ``__all__`` of :mod:`neurode`, ``neurode.solvers``,
``neurode.nn`` and ``neurode.data``. Each must appear in a ``::: identifier`` block of an API
reference page, have a docstring, and every parameter of a public function, class constructor
or public method must be described in its docstring's ``Args:`` section.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re

log = logging.getLogger("mkdocs.plugins.neurode")

PUBLIC_MODULES = ("neurode", "neurode.solvers", "neurode.nn", "neurode.data")
_DIRECTIVE = re.compile(r"^:::\s+([\w.]+)", re.M)
_documented: set[str] = set()


def public_objects() -> dict[str, object]:
    """``{"neurode.odeint": obj, ...}``: each public object under its shortest public path."""
    seen: dict[int, str] = {}
    out: dict[str, object] = {}
    for modname in PUBLIC_MODULES:
        module = importlib.import_module(modname)
        for name in module.__all__:
            if name.startswith("__"):
                continue
            obj = getattr(module, name)
            path = f"{modname}.{name}"
            key = id(obj)
            if key in seen and not isinstance(obj, (int, float, str)):
                continue
            seen[key] = path
            out[path] = obj
    return out


def missing_parameters(obj: object) -> list[str]:
    """Parameters of a function (or of a class's ``__init__``) absent from its ``Args:``."""
    if inspect.isclass(obj):
        doc = (obj.__doc__ or "") + "\n" + (obj.__init__.__doc__ or "")
        if obj.__init__ is object.__init__ or "__init__" not in vars(obj):
            return []
        target = obj.__init__
    elif inspect.isfunction(obj):
        doc, target = obj.__doc__ or "", obj
    else:
        return []
    missing = []
    for p in inspect.signature(target).parameters.values():
        if p.name in ("self", "cls") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if not re.search(rf"^\s+\**{re.escape(p.name)}( \([^)]*\))?:", doc, re.M):
            missing.append(p.name)
    return missing


def public_methods(obj: object) -> list[tuple[str, object]]:
    """The public methods a class defines itself (``forward`` included: it is the call)."""
    if not inspect.isclass(obj):
        return []
    return [(name, m) for name, m in vars(obj).items()
            if not name.startswith("_") and inspect.isfunction(m)]


def on_page_markdown(markdown: str, page, config, files):
    _documented.update(_DIRECTIVE.findall(markdown))
    return markdown


def on_post_build(config):
    objects = public_objects()
    for path, obj in objects.items():
        if path not in _documented:  # each object under its first public path
            log.warning("public name %s has no '::: %s' block in the API reference", path, path)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and not (obj.__doc__ or "").strip():
            log.warning("public name %s has no docstring", path)
        for p in missing_parameters(obj):
            log.warning("public name %s: parameter %r is not described under Args:", path, p)
        for name, method in public_methods(obj):
            if not (method.__doc__ or "").strip():
                log.warning("public method %s.%s has no docstring", path, name)
            for p in missing_parameters(method):
                log.warning("public method %s.%s: parameter %r is not described under Args:",
                            path, name, p)
