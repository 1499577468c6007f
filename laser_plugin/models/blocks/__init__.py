"""Network building blocks shared by the π³ and VGGT backends (plain PyTorch, no upstream code)."""

from laser_plugin.models.blocks.dpt import DPTHead as DPTHead
from laser_plugin.models.blocks.transformer import Attention as Attention
from laser_plugin.models.blocks.transformer import Block as Block
from laser_plugin.models.blocks.transformer import LayerScale as LayerScale
from laser_plugin.models.blocks.transformer import Mlp as Mlp
from laser_plugin.models.blocks.transformer import Rope2D as Rope2D
from laser_plugin.models.blocks.transformer import grid_positions as grid_positions
from laser_plugin.models.blocks.vit import DinoViT as DinoViT
