"""Export models for deployment: ONNX (onnxruntime), TorchScript and weights-only safetensors — classifiers, dense
backbones and the segmentation, detection and pose task models.

What is exported (the *I/O contract*, recorded in every file's metadata and, by :func:`export_model` and
``uniformer export``, in ``OUTPUT.json`` beside it):

* classifier: ``input`` (B, 3, H, W) — video (B, 3, T, H, W) — normalised with the model's mean/std → ``logits``
  (B, K); dense backbones (``features_only``) → ``features_0..3``. Dynamic batch; H, W (T) fixed at export.
* segmentation: ``image`` (B, 3, H, W) normalised → ``logits`` (B, K, H, W) at the input size (the stride-4 logits
  upsampled inside the graph; the input zero-padded to a multiple of 32 and the logits cropped back). Dynamic batch,
  height and width (sides ≥ 64).
* pose: ``image`` (B, 3, H, W) normalised person crops → ``heatmaps`` (B, J, ceil(H/4), ceil(W/4)). Dynamic batch,
  height and width (sides ≥ 64).
* detection, torchvision Mask R-CNN: ``image`` (3, H, W) RGB in [0, 1], one image, any size (normalised and resized
  inside the graph) → ``boxes`` (N, 4) x1 y1 x2 y2 in input pixels, ``labels`` (N,) int64 1..K, ``scores`` (N,),
  ``masks`` (N, 1, H, W) probabilities.
* detection, mmdet port (Cascade Mask R-CNN runs, official mmdet configs): ``image`` (B, 3, H, W) normalised, H, W
  multiples of 32 → ``fpn_0..4`` (strides 4–64), ``rpn_cls_0..4``, ``rpn_reg_0..4`` (backbone + FPN + RPN head,
  :class:`~uniformer.tasks.mmdet_rcnn.MMDetFeatures`): its test-time post-processing is not traceable (see there).

Every file is written atomically (a temporary file renamed over the target) and, by default, checked: the exported
ONNX / TorchScript model is run on the example input *and* on an input of another batch size (dense tasks: also
another height and width; detection: another image size), and its outputs must match the eager PyTorch model within
``atol`` = 1e-4 (detection: ``atol`` 1e-4 + ``rtol`` 1e-3 × |value|, detections paired across near-tied scores; a
``ValueError`` reports the measured difference otherwise).

ONNX exporter choice (PyTorch 2.14, onnxscript 0.7, onnxruntime 1.31), measured for every family:

* ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript) exports the image, token-labeling, video,
  dense, VT-ResNet, segmentation, pose and mmdet-feature models. The hourglass (light) models — ``uniformer_xxs/xs``,
  their video and dense variants — prune tokens with ``torch.argsort(..., stable=True)``, i.e. ``aten.sort.stable``,
  which the onnxscript torch library does not translate ("No ONNX function found for aten.sort.stable"). We translate
  it to ONNX ``TopK`` over the whole axis: the ONNX spec makes ``TopK`` break ties by the lower index, which is
  exactly a stable sort, so the exported light models reproduce the eager token order (ties included) and logits.
* torchvision's Mask R-CNN does not go through torch.export ("Could not guard on data-dependent expression" in
  torchvision's ``batched_nms``); it is exported, as torchvision documents, with the TorchScript-based exporter
  (``dynamo=False``, opset 17) through :class:`~uniformer.tasks.detection.SingleImageMaskRCNN`. Two fixes make that
  graph right: ``Transpose`` nodes with negative ``perm`` entries (from ``movedim``, refused by onnxruntime) are
  rewritten with the equivalent positive axes, and the resize size is computed in float64 as torchvision's eager code
  does (the exporter's float32 cast rounds e.g. 100 × 1.28 to 127).
* The TorchScript-based exporter is **not** used for the other families: it rejects the stable argsort of the light
  models ("ONNX export of operator Sort, Out parameter is not supported").
"""
from .formats import (FORMATS, contract_path, export_model, export_onnx, export_safetensors, export_torchscript,
                      export_with_contract, resolve_format)
from .spec import ExportSpec, example_input, export_spec

__all__ = [
    "FORMATS", "ExportSpec", "export_spec", "export_onnx", "export_torchscript", "export_safetensors", "example_input",
    "export_model", "export_with_contract", "contract_path", "resolve_format",
]
