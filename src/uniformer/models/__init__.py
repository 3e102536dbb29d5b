"""Model definitions; importing this package registers every architecture with timm."""
from . import uniformer_dense, uniformer_video, vt_resnet  # noqa: F401  (register dense, video and VT models)
from .uniformer import UniFormer
from .uniformer_light import UniFormerLight
from .vt_resnet import VTResNet

__all__ = ["UniFormer", "UniFormerLight", "VTResNet"]
