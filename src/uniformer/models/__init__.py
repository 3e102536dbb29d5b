"""Model definitions; importing this package registers every architecture with timm."""
from . import uniformer_video, vt_resnet  # noqa: F401  (register the video and VT architectures)
from .uniformer import UniFormer
from .uniformer_light import UniFormerLight
from .vt_resnet import VTResNet

__all__ = ["UniFormer", "UniFormerLight", "VTResNet"]
