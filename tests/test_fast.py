"""The fast inference path equals the eager model for every family: BatchNorm folding (with non-trivial running
statistics, so a wrong fold cannot pass), channels-last, and torch.compile."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import uniformer
from uniformer.fast import fold_bn_into_next_conv, optimize_for_inference, reparameterize

TINY = dict(depth=[1, 1, 2, 1], embed_dim=[16, 32, 64, 128], head_dim=16)
FAMILIES = {
    "image": ("uniformer_small", dict(TINY, num_classes=10), (2, 3, 64, 96)),
    "conv stem (S+)": ("uniformer_small_plus", dict(TINY, num_classes=10), (2, 3, 64, 64)),
    "token labeling": ("uniformer_small_tl", dict(TINY, num_classes=10), (2, 3, 64, 64)),
    "hourglass": ("uniformer_xxs", dict(num_classes=10), (2, 3, 64, 64)),
    "video": ("uniformer_video_small", dict(TINY, num_classes=10), (2, 3, 4, 64, 64)),
    "video hourglass": ("uniformer_video_xxs", dict(num_classes=10), (1, 3, 4, 64, 64)),
    "dense": ("uniformer_small", dict(TINY, features_only=True, hybrid=True, window_size=2), (1, 3, 64, 96)),
    "vt": ("vt_resnet18", dict(num_classes=10), (2, 3, 64, 64)),
}


def randomised(model: nn.Module) -> nn.Module:
    """Give every BatchNorm running statistics and affine parameters far from the identity."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def outputs_close(a, b, atol=1e-4) -> None:
    a, b = (a, b) if isinstance(a, (list, tuple)) else ([a], [b])
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, rtol=0, atol=atol)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    name, kwargs, shape = FAMILIES[request.param]
    torch.manual_seed(0)
    model = randomised(uniformer.create_model(name, **kwargs))
    x = torch.randn(shape)
    with torch.no_grad():
        return request.param, model, x, model(x)


def test_reparameterized_equals_eager(family):
    label, model, x, ref = family
    before = batch_norms(model)
    fast = optimize_for_inference(model)
    assert batch_norms(fast) < before == batch_norms(model)  # a copy was folded; the original is untouched
    with torch.no_grad():
        outputs_close(ref, fast(x))
        layout = torch.channels_last_3d if x.ndim == 5 else torch.channels_last
        outputs_close(ref, fast(x.contiguous(memory_format=layout)))


def test_bf16_fast_path_runs_every_family(family):
    """The opt-in bf16 path: finite outputs within bf16 rounding of the fp32 model (relative error < 5 %)."""
    label, model, x, ref = family
    fast = optimize_for_inference(model, dtype=torch.bfloat16)
    with torch.no_grad():
        out = fast(x.to(torch.bfloat16))
    ref, out = (ref, out) if isinstance(ref, (list, tuple)) else ([ref], [out])
    for a, b in zip(ref, out):
        assert b.dtype == torch.bfloat16 and torch.isfinite(b).all()
        assert float((b.float() - a).norm() / a.norm()) < 0.05, label


def test_only_the_classifier_norm_is_left():
    model = randomised(uniformer.create_model("uniformer_small_plus", **TINY))
    fast = optimize_for_inference(model)
    left = [n for n, m in fast.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert left == ["norm"]


@pytest.mark.slow
@pytest.mark.parametrize("label", ["image", "hourglass"])
def test_compiled_fast_path_equals_eager(label):
    name, kwargs, shape = FAMILIES[label]
    torch.manual_seed(0)
    model = randomised(uniformer.create_model(name, **kwargs))
    x = torch.randn(shape)
    with torch.no_grad():
        outputs_close(model(x), optimize_for_inference(model, compile=True)(x))


def test_fold_bn_into_next_conv_is_exact_and_checks_the_conv():
    torch.manual_seed(0)
    bn, conv = randomised(nn.BatchNorm2d(8)), nn.Conv2d(8, 4, 1, bias=False)
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        ref = conv(bn(x))
        fold_bn_into_next_conv(bn, conv)
        torch.testing.assert_close(conv(x), ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="1x1 convolution"):
        fold_bn_into_next_conv(nn.BatchNorm2d(8).eval(), nn.Conv2d(8, 8, 3, padding=1))


def test_reparameterize_refuses_training_mode():
    with pytest.raises(ValueError, match="eval-mode"):
        reparameterize(uniformer.create_model("uniformer_small", **TINY))


@pytest.mark.slow
def test_bench_cli_writes_table_json_and_chart(tmp_path):
    """`uniformer bench` end to end on a small input (numbers are machine-dependent: only their presence and
    consistency are checked, never a timing)."""
    import json

    from conftest import run_cli

    out = run_cli("bench", "uniformer_xxs", "--img-size", "64", "--batch-size", "2", "--iters", "1",
                  "--paths", "baseline,fast", "--output-dir", str(tmp_path), OMP_NUM_THREADS="1").stdout
    assert "fp32 matmul peak" in out and "| `uniformer_xxs` | fast | 3x64x64 |" in out
    report = json.loads((tmp_path / "bench.json").read_text())
    rows = {r["path"]: r for r in report["results"]}
    assert set(rows) == {"baseline", "fast"} and report["machine"]["threads"] == 1
    for r in rows.values():
        assert r["throughput"] > 0 and r["latency_ms"] > 0 and r["peak_rss_mb"] > 0
        assert abs(r["achieved_gflops_s"] - 2 * r["gflops"] * r["throughput"]) < 1e-6 * r["achieved_gflops_s"] + 1e-9
    assert rows["baseline"]["train_steps_s"] > 0  # training is measured on the eager paths only
    from PIL import Image

    with Image.open(tmp_path / "bench.png") as img:
        assert img.format == "PNG"


@pytest.mark.slow
def test_bench_rejects_unknown_paths_and_models(tmp_path):
    from conftest import one_line_error, run_cli

    one_line_error(run_cli("bench", "uniformer_xxs", "--paths", "turbo", check=False), "--paths")
    one_line_error(run_cli("bench", "uniformer_smal", check=False), "uniformer_small")
