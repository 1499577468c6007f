"""Reconstruction backends, found through the ``laser_plugin.models`` entry-point group.

A third-party package registers ``name = "pkg.module:factory"`` in that group; the factory is
called as ``factory(weights=..., device=..., **kw)`` and returns a ``ReconstructionModel``.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from laser_plugin.errors import ConfigError

GROUP = "laser_plugin.models"

# Built-ins, used when the package's metadata is unavailable (e.g. run from a source tree).
_BUILTIN = {
    "synthetic": "laser_plugin.models.synthetic:make_model",
    "pi3": "laser_plugin.models.pi3:make_model",
    "vggt": "laser_plugin.models.vggt:make_model",
}


def available_models() -> dict[str, str]:
    """name -> "module:attr" for every registered backend."""
    found = dict(_BUILTIN)
    for ep in entry_points(group=GROUP):
        found[ep.name] = ep.value
    return found


def load_model(name: str, weights: str | None = None, device: str = "cpu", **kwargs):
    """Build the backend ``name`` (see :func:`available_models`)."""
    import importlib

    models = available_models()
    if name not in models:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(models))}")
    module_name, _, attr = models[name].partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"model {name!r} is registered as {models[name]} but cannot be imported: {exc}"
        ) from None
    return factory(weights=weights, device=device, **kwargs)


__all__ = ["GROUP", "available_models", "load_model"]
