"""Loading official and own checkpoints: wrappers, prefixes, formats, class-count changes, and refusals."""
from __future__ import annotations

import logging
import os
import pickle

import pytest
import timm
import torch
from conftest import TINY, TINY_LIGHT
from safetensors.torch import save_file

import uniformer


def tiny(name="uniformer_small", **kw):
    torch.manual_seed(0)
    return uniformer.create_model(name, **dict(TINY if "xxs" not in name else TINY_LIGHT, **kw)).eval()


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"model": sd, "optimizer": {}, "epoch": 3},
        lambda sd: {"state_dict": sd, "state_dict_ema": sd},
        lambda sd: {"model_state": sd, "epoch": 1},
        lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {"state_dict": {f"backbone.{k}": v for k, v in sd.items()}},
    ],
    ids=["plain", "model", "state_dict", "model_state", "module-prefix", "backbone-prefix"],
)
def test_official_wrappers(wrap):
    src, dst = tiny(), uniformer.create_model("uniformer_small", **TINY)
    uniformer.load_checkpoint(dst, wrap(src.state_dict()))
    assert same_weights(src, dst)


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".safetensors"])
def test_file_formats_and_create_model_checkpoint_path(tmp_path, suffix):
    src = tiny()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(src.state_dict(), str(path))
    else:
        torch.save({"model": src.state_dict(), "args": __import__("argparse").Namespace(lr=1e-3)}, path)
    model = uniformer.create_model("uniformer_small", checkpoint_path=path, **TINY)
    assert same_weights(src, model)


def test_timm_pretrained_from_local_file_offline(tmp_path):
    src = tiny()
    path = tmp_path / "official.pth"
    torch.save({"model": src.state_dict()}, path)
    model = timm.create_model(
        "uniformer_small", pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10), **TINY
    )
    assert same_weights(src, model)


def test_ema_weights_on_request_and_light_default():
    src, other = tiny("uniformer_xxs"), tiny("uniformer_xxs")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    ckpt = {"model": src.state_dict(), "model_ema": other.state_dict()}
    light = uniformer.create_model("uniformer_xxs", **TINY_LIGHT)
    uniformer.load_checkpoint(light, ckpt)  # light models default to the EMA weights the authors evaluated
    assert same_weights(light, other)
    uniformer.load_checkpoint(light, ckpt, use_ema=False)
    assert same_weights(light, src)
    with pytest.raises(ValueError, match="no EMA weights"):
        uniformer.load_checkpoint(tiny(), {"model": tiny().state_dict()}, use_ema=True)


def test_class_count_change_drops_every_head_with_warning(caplog):
    src = tiny("uniformer_xxs")
    dst = uniformer.create_model("uniformer_xxs", **dict(TINY_LIGHT, num_classes=3))
    with caplog.at_level(logging.WARNING, logger="uniformer"):
        result = uniformer.load_checkpoint(dst, {"model": src.state_dict()})
    assert sorted(result.dropped_heads) == ["head.bias", "head.weight", "head_cls.bias", "head_cls.weight"]
    assert "different class count" in caplog.text
    assert torch.equal(dst.state_dict()["blocks3.1.attn.qkv.weight"], src.state_dict()["blocks3.1.attn.qkv.weight"])


def test_backbone_without_classifier_skips_the_tail():
    dst = uniformer.create_model("uniformer_small", **dict(TINY, num_classes=0))
    result = uniformer.load_checkpoint(dst, tiny().state_dict())
    assert sorted(result.dropped_tail) == ["head.bias", "head.weight"]


def test_layer_scale_weights_are_never_dropped_silently():
    ls = uniformer.create_model("uniformer_base_ls", **TINY)
    plain = uniformer.create_model("uniformer_base", **TINY)
    with pytest.raises(ValueError, match="layer-scale weights the model lacks.*gamma_1"):
        uniformer.load_checkpoint(plain, ls.state_dict())
    uniformer.load_checkpoint(plain, ls.state_dict(), allow_layer_scale_drop=True)


def test_wrong_architecture_names_the_differing_keys():
    with pytest.raises(ValueError, match=r"missing \d+ key\(s\): blocks2\.1\..*"):
        uniformer.load_checkpoint(uniformer.create_model("uniformer_small", **dict(TINY, depth=[1, 2, 2, 1])),
                                  tiny().state_dict())
    with pytest.raises(ValueError, match=r"unexpected \d+ key\(s\)"):
        uniformer.load_checkpoint(tiny(), uniformer.create_model("uniformer_small", **dict(TINY, depth=[1, 2, 2, 1])).state_dict())
    with pytest.raises(ValueError, match=r"shape mismatch.*patch_embed1\.proj\.weight \(checkpoint \[16, 3, 4, 4\] vs model \[24"):
        uniformer.load_checkpoint(uniformer.create_model("uniformer_small", **dict(TINY, embed_dim=[24, 32, 64, 128])),
                                  tiny().state_dict())
    result = uniformer.load_checkpoint(
        uniformer.create_model("uniformer_small", **dict(TINY, depth=[1, 2, 2, 1])), tiny().state_dict(), strict=False
    )
    assert result.missing_keys and not result.unexpected_keys


def test_missing_truncated_and_non_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        uniformer.load_checkpoint(tiny(), tmp_path / "nope.pth")
    good = tmp_path / "good.pth"
    torch.save({"model": tiny().state_dict()}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.pth.*truncated or corrupt"):
        uniformer.load_checkpoint(tiny(), truncated)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="bad.safetensors"):
        uniformer.load_checkpoint(tiny(), bad_st)
    empty = tmp_path / "list.pth"
    torch.save([1, 2, 3], empty)
    with pytest.raises(ValueError, match="holds a list"):
        uniformer.load_checkpoint(tiny(), empty)
    with pytest.raises(ValueError, match="no state dict of tensors"):
        uniformer.load_checkpoint(tiny(), {"epoch": 3, "args": "x"})


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EXPLOIT_MARKER']}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EXPLOIT_MARKER", str(marker))
    path = tmp_path / "evil.pth"
    torch.save({"model": tiny().state_dict(), "payload": _Exploit()}, path)
    assert not marker.exists()
    with pytest.raises(ValueError, match="refusing to load .*evil.pth.*nothing in the file was executed"):
        uniformer.load_checkpoint(tiny(), path)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(ValueError, match="refusing to load"):
        uniformer.read_checkpoint(raw)
    assert not marker.exists()


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(ValueError, match="unknown model 'uniformer_smal'; did you mean uniformer_small"):
        uniformer.create_model("uniformer_smal")
    with pytest.raises(ValueError, match="unknown checkpoint tag 'in22k'.*in1k"):
        uniformer.create_model("uniformer_small.in22k")
