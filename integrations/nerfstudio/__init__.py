"""nerfstudio integration: dataset and COLMAP writers, the ``laser-data`` dataparser and the
``ns-process-data laser`` subcommand.

The writers need only numpy and Pillow; the dataparser and the subcommand import nerfstudio,
so they live in their own modules (``dataparser``, ``process_data``) imported on demand. The
names below load on first use (PEP 562), so the export options (``options``) import cheaply.
"""

from typing import TYPE_CHECKING

_LAZY = {
    "ColmapExportConfig": "options",
    "ColmapWriter": "colmap",
    "FrameEntry": "schema",
    "NerfstudioExportConfig": "options",
    "NerfstudioWriter": "writer",
    "PinholeIntrinsics": "schema",
    "TransformsFile": "schema",
}

if TYPE_CHECKING:
    from laser_plugin.integrations.nerfstudio.colmap import ColmapWriter as ColmapWriter
    from laser_plugin.integrations.nerfstudio.options import (
        ColmapExportConfig as ColmapExportConfig,
    )
    from laser_plugin.integrations.nerfstudio.options import (
        NerfstudioExportConfig as NerfstudioExportConfig,
    )
    from laser_plugin.integrations.nerfstudio.schema import FrameEntry as FrameEntry
    from laser_plugin.integrations.nerfstudio.schema import PinholeIntrinsics as PinholeIntrinsics
    from laser_plugin.integrations.nerfstudio.schema import TransformsFile as TransformsFile
    from laser_plugin.integrations.nerfstudio.writer import NerfstudioWriter as NerfstudioWriter


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
