"""nerfstudio integration: dataset and COLMAP writers, the ``laser-data`` dataparser and the
``ns-process-data laser`` subcommand.

The writers need only numpy and Pillow; the dataparser and the subcommand import nerfstudio,
so they live in their own modules (``dataparser``, ``process_data``) imported on demand.
"""

from laser_plugin.integrations.nerfstudio.colmap import ColmapExportConfig as ColmapExportConfig
from laser_plugin.integrations.nerfstudio.colmap import ColmapWriter as ColmapWriter
from laser_plugin.integrations.nerfstudio.schema import FrameEntry as FrameEntry
from laser_plugin.integrations.nerfstudio.schema import PinholeIntrinsics as PinholeIntrinsics
from laser_plugin.integrations.nerfstudio.schema import TransformsFile as TransformsFile
from laser_plugin.integrations.nerfstudio.writer import (
    NerfstudioExportConfig as NerfstudioExportConfig,
)
from laser_plugin.integrations.nerfstudio.writer import NerfstudioWriter as NerfstudioWriter

__all__ = [
    "ColmapExportConfig",
    "ColmapWriter",
    "FrameEntry",
    "NerfstudioExportConfig",
    "NerfstudioWriter",
    "PinholeIntrinsics",
    "TransformsFile",
]
