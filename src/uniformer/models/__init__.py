"""Model definitions; importing this package registers every architecture with timm."""
from . import uniformer_video  # noqa: F401  (registers the video architectures)
from .uniformer import UniFormer
from .uniformer_light import UniFormerLight

__all__ = ["UniFormer", "UniFormerLight"]
