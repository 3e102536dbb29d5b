"""Model definitions; importing this package registers every architecture with timm."""
from .uniformer import UniFormer
from .uniformer_light import UniFormerLight

__all__ = ["UniFormer", "UniFormerLight"]
