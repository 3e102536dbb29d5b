"""Model definitions; importing this package registers every architecture with timm."""
from . import uniformer_video, vt_resnet  # noqa: F401  (register the video and VT models)
from .token_labeling import TokenLabelingOutput
from .uniformer import UniFormer, UniFormerDense
from .uniformer_light import LightTrainingOutput, UniFormerLight, UniFormerLightDense
from .vt_resnet import VTResNet

__all__ = ["UniFormer", "UniFormerDense", "UniFormerLight", "UniFormerLightDense", "TokenLabelingOutput",
           "LightTrainingOutput", "VTResNet"]
