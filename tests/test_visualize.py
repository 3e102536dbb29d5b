"""Token attention pictures: maps from the first VT module's filter tokenizer and the PNG grid written from them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from PIL import Image

import uniformer
from uniformer.layers.vt import VTModule
from uniformer.visualize import DPI, PANEL_INCHES, TITLE_INCHES, save_token_attention_grid, token_attention_maps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class StandIn(nn.Module):
    """The VT-ResNet layout the visualiser relies on: torchvision ResNet-18 stem and stages 1–3, then ``vt``."""

    def __init__(self, first: bool = True, num_tokens: int = 16) -> None:
        super().__init__()
        r = torchvision.models.resnet18(weights=None)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"):
            setattr(self, name, getattr(r, name))
        self.vt = nn.ModuleList([VTModule(256, 512, first=first, num_tokens=num_tokens, projector=False)])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return StandIn()


@pytest.fixture
def image_file(tmp_path):
    pixels = np.zeros((180, 260, 3), dtype=np.uint8)  # non-square: exercises resize + centre crop
    pixels[40:140, 80:200] = (240, 200, 40)
    pixels[:, :30] = (20, 20, 200)
    path = tmp_path / "scene.png"
    Image.fromarray(pixels).save(path)
    return path


def _grid_size(tokens: int, columns: int):
    rows = -(-tokens // columns)
    return round(columns * PANEL_INCHES * DPI), round((rows * PANEL_INCHES + TITLE_INCHES) * DPI)


def test_maps_are_distributions_over_the_stride16_grid(model):
    model.train()
    image = torch.randn(2, 3, 224, 192)
    maps = token_attention_maps(model, image)
    assert tuple(maps.shape) == (16, 14, 12)
    assert (maps >= 0).all()
    torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(16))
    assert model.training  # mode restored
    torch.testing.assert_close(token_attention_maps(model, image[0]), maps)  # (C, H, W) input, first image used


def test_maps_match_the_vt_module_attention(model):
    image = torch.randn(1, 3, 160, 160)
    model.eval()
    with torch.no_grad():
        x = image
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"):
            x = getattr(model, name)(x)
        _, _, attn = model.vt[0](x)
    torch.testing.assert_close(token_attention_maps(model, image), attn["tokenizer"][0, 0].reshape(16, 10, 10))


@pytest.mark.parametrize("columns", [4, 3])
def test_grid_is_a_png_with_one_panel_per_token(model, image_file, tmp_path, columns):
    out = tmp_path / "figs" / "attention.png"
    result = save_token_attention_grid(model, image_file, out, size=224, columns=columns)
    assert result == out and out.is_file()
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size == _grid_size(16, columns)  # 4×4 or 3×6 panels
        assert np.asarray(img.convert("RGB")).std() > 10  # not blank
    assert sorted(p.name for p in out.parent.iterdir()) == ["attention.png"]  # atomic: no temporary left behind


def test_grid_overwrites_and_accepts_str_paths(model, image_file, tmp_path):
    out = tmp_path / "grid.png"
    out.write_bytes(b"old")
    save_token_attention_grid(model, str(image_file), str(out), size=64, columns=8)
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(out) as img:
        assert img.size == _grid_size(16, 8)


def test_model_without_filter_tokenizer_is_rejected(image_file, tmp_path):
    recurrent = StandIn(first=False)
    with pytest.raises(ValueError, match="StandIn has no filter tokenizer"):
        token_attention_maps(recurrent, torch.randn(1, 3, 64, 64))
    resnet = torchvision.models.resnet18(weights=None)
    with pytest.raises(ValueError, match="ResNet"):
        token_attention_maps(resnet, torch.randn(1, 3, 64, 64))
    out = tmp_path / "never.png"
    with pytest.raises(ValueError, match="StandIn"):
        save_token_attention_grid(recurrent, image_file, out)
    assert not out.exists()


def test_bad_arguments(model, image_file, tmp_path):
    with pytest.raises(ValueError, match="image must be"):
        token_attention_maps(model, torch.randn(64, 64))
    with pytest.raises(ValueError, match="columns"):
        save_token_attention_grid(model, image_file, tmp_path / "x.png", columns=0)
    with pytest.raises(FileNotFoundError):
        save_token_attention_grid(model, tmp_path / "missing.png", tmp_path / "x.png")


def test_registered_vt_resnet18(image_file, tmp_path):
    torch.manual_seed(0)
    vt = uniformer.create_model("vt_resnet18")
    maps = token_attention_maps(vt, torch.randn(1, 3, 224, 224))
    assert tuple(maps.shape) == (vt.num_tokens if hasattr(vt, "num_tokens") else 16, 14, 14)
    torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(maps.shape[0]))
    out = save_token_attention_grid(vt, image_file, tmp_path / "vt.png")
    with Image.open(out) as img:
        assert img.size == _grid_size(maps.shape[0], 4)
