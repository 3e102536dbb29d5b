"""Model definitions; importing this package registers every architecture with timm."""
from . import uniformer_video, vt_resnet  # noqa: F401  (register the video and VT models)
from .uniformer import TokenLabelingOutput, UniFormer, UniFormerDense
from .uniformer_light import UniFormerLight, UniFormerLightDense
from .vt_resnet import VTResNet

__all__ = ["UniFormer", "UniFormerDense", "UniFormerLight", "UniFormerLightDense", "TokenLabelingOutput", "VTResNet"]
