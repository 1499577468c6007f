"""The ``laser-data`` dataparser: nerfstudio's own ``nerfstudio-data`` parser with defaults that
keep a LASER reconstruction as it is.

Registered under the ``nerfstudio.dataparser_configs`` entry-point group (pyproject.toml), so
``ns-train splatfacto --data OUT laser-data`` picks it. Differences from ``nerfstudio-data``:

- no re-orientation, re-centring or re-scaling of the poses (nerfstudio's defaults are ``up``,
  ``poses`` and ``auto_scale_poses=True``), so the trained scene stays in our metric-free but
  consistent world frame (the first camera, OpenCV axes: y points down in the viewer);
- the depth unit comes from the dataset's own ``depth_unit_scale_factor`` key (nerfstudio
  assumes millimetres, 0.001, even for float ``.npy``);
- the sparse point cloud is loaded (splatfacto initialises from it).

Every option of ``nerfstudio-data`` is still available on the command line.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Literal

from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig
from nerfstudio.plugins.registry_dataparser import DataParserSpecification


@dataclass
class LaserDataParserConfig(NerfstudioDataParserConfig):
    """nerfstudio-data with LASER's defaults (see the module docstring)."""

    _target: type = field(default_factory=lambda: LaserDataParser)
    """Target class to instantiate."""
    orientation_method: Literal["pca", "up", "vertical", "none"] = "none"
    """Keep LASER's world orientation (the first camera's axes)."""
    center_method: Literal["poses", "focus", "none"] = "none"
    """Keep LASER's world origin (the first camera's centre)."""
    auto_scale_poses: bool = False
    """Keep LASER's scale (depth maps and the point cloud share it)."""
    load_3D_points: bool = True
    """Load sparse_pc.ply for splatfacto's initialisation."""
    depth_unit_from_dataset: bool = True
    """Use the depth unit the dataset declares (transforms.json "depth_unit_scale_factor")
    instead of --depth-unit-scale-factor."""


@dataclass
class LaserDataParser(Nerfstudio):
    """Reads a LASER export; delegates everything else to nerfstudio's parser."""

    config: LaserDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train"):
        if self.config.depth_unit_from_dataset:
            meta_path = (
                self.config.data
                if self.config.data.suffix == ".json"
                else self.config.data / "transforms.json"
            )
            if meta_path.is_file():
                declared = json.loads(meta_path.read_text(encoding="utf-8")).get(
                    "depth_unit_scale_factor"
                )
                if declared is not None:
                    self.config = dataclasses.replace(
                        self.config, depth_unit_scale_factor=float(declared)
                    )
        return super()._generate_dataparser_outputs(split)


laser_data = DataParserSpecification(
    config=LaserDataParserConfig(),
    description="LASER export (ns-process-data laser / laser export nerfstudio): keeps poses, scale and depth unit",
)
"""The entry point ``laser-data`` (group ``nerfstudio.dataparser_configs``)."""
