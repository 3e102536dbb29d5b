"""No module-level state: building or running one model never affects another (official bugs §7.1–7.3)."""
from __future__ import annotations

import threading

import pytest
import torch
from conftest import TINY_LIGHT

import uniformer
from uniformer.layers import HourglassBlock, PruneState, initial_prune_state


def test_building_layer_scale_model_does_not_change_later_models():
    before = uniformer.count_params(uniformer.create_model("uniformer_small"))
    uniformer.create_model("uniformer_base_ls")
    uniformer.create_model("uniformer_large_ls_tl")
    after = uniformer.create_model("uniformer_small")
    assert before == uniformer.count_params(after) == 21_545_256
    assert not any("gamma" in k for k in after.state_dict())


def _light(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return uniformer.create_model("uniformer_xxs", **TINY_LIGHT).eval()


def test_two_light_models_in_threads_match_sequential_runs():
    models = [_light(0), _light(1)]
    inputs = [torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with torch.no_grad():
        alone = [m(x) for m, x in zip(models, inputs)]
    results = [[None] * 20 for _ in models]

    def run(i):
        with torch.no_grad():
            for r in range(20):
                results[i][r] = models[i](inputs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        for out in results[i]:
            torch.testing.assert_close(out, alone[i], rtol=0, atol=0)


@pytest.mark.slow
def test_light_model_traces_and_compiles():
    model = _light(0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), ref, rtol=1e-5, atol=1e-5)
        compiled = torch.compile(model, fullgraph=True)  # Inductor, no graph breaks
        torch.testing.assert_close(compiled(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_token_recovery_is_exact_with_many_tokens_in_half_precision(dtype):
    """2,304 tokens (> 2048, where fp16 stops representing integers exactly; bf16 already at 256)."""
    torch.manual_seed(0)
    block = HourglassBlock(32, num_heads=2, prune_ratio=0.5).to(dtype).eval()
    with torch.no_grad():  # silence every residual branch: a correct block is then the identity on tokens
        for p in (block.pos_embed.weight, block.pos_embed.bias, block.attn.proj.weight, block.attn.proj.bias,
                  block.mlp.fc2.weight, block.mlp.fc2.bias):
            p.zero_()
    x = torch.randn(2, 32, 48, 48, dtype=dtype)
    cls = torch.randn(2, 1, 32, dtype=dtype)
    state = initial_prune_state(x, torch.rand(2, 48 * 48, dtype=dtype))
    with torch.no_grad():
        _, out, new_state = block(cls, x, state)
    assert new_state.index.dtype == torch.long
    assert torch.equal(new_state.index, torch.arange(48 * 48).expand(2, -1))
    assert torch.equal(out, x)


def test_full_light_model_keeps_raster_order_in_bf16_at_large_resolution():
    model = _light(0).to(torch.bfloat16)
    seen = []

    def hook(module, args, output):
        _, _, state = output
        seen.append(state.index.dtype == torch.long and torch.equal(state.index[0], torch.arange(state.index.shape[1])))

    for m in model.modules():
        if isinstance(m, HourglassBlock):
            m.register_forward_hook(hook)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 768, 768, dtype=torch.bfloat16))  # stage 3: 48x48 = 2,304 tokens
    assert torch.isfinite(out.float()).all()
    assert len(seen) == 5 and all(seen)


def test_stage4_scores_keep_their_mass():
    model = _light(0)
    sums = {}

    def hook(name):
        def fn(module, args, output):
            sums[name] = (args[2].score, output[2].score)
        return fn

    model.blocks3[-1].register_forward_hook(hook("last3"))
    model.blocks4[0].register_forward_hook(hook("first4"))
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(sums["first4"][0].sum(1), sums["last3"][1].sum(1))
    assert isinstance(PruneState(None, torch.zeros(1, 1, dtype=torch.long)), tuple)
