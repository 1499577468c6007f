"""Ecosystem adapters (Rerun, viser, nerfstudio), imported as ``laser_plugin.integrations``.

Their code lives in the repository's top-level ``integrations/`` folder. A built wheel places that
folder here (pyproject.toml force-include, replacing this file); in a source checkout or an
editable install this file adds the folder to the package path.
"""

import os as _os

_src = _os.path.join(
    _os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))), "integrations"
)
if _os.path.isfile(_os.path.join(_src, "__init__.py")):
    __path__.append(_src)
