"""Downstream tasks built on the backbones (VT-FPN semantic segmentation: :mod:`uniformer.tasks.vt_fpn`)."""
