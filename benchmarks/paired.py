"""Paired speed comparison of the paths of one model, interleaved so that a noisy machine (shared hosts, vCPUs that are
sometimes hyper-thread siblings) affects every path alike: each round times one call of every path in turn, and the
report gives per-path medians and the median of the per-round ratios to the baseline.

    .venv/bin/python benchmarks/paired.py uniformer_small --batch-size 32 --rounds 7            # inference
    .venv/bin/python benchmarks/paired.py uniformer_small --train --batch-size 32 --rounds 5    # training steps

Inference paths: baseline (explicit attention matmuls, as the official code), eager (scaled_dot_product_attention),
fast (uniformer.optimize_for_inference: BatchNorms folded, channels-last), fast-bf16 (the same in bfloat16; its
"% of peak" is relative to the fp32 matmul peak). Training paths: baseline (explicit
attention, PyTorch's default AdamW), fast (SDPA + fused AdamW, the engine's default), fast-bf16 (plus bf16
autocast). A matmul peak is measured in every round as well.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

import uniformer
from uniformer.bench import _input_shape, matmul_peak_gflops
from uniformer.fast import input_memory_format, optimize_for_inference
from uniformer.flops import count_flops, explicit_attention


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def inference_paths(name: str, batch: int, size):
    model = uniformer.create_model(name).eval()
    shape = _input_shape(model, batch, size)
    x = torch.randn(shape)
    fast = optimize_for_inference(model)
    xf = x.contiguous(memory_format=input_memory_format(model)[0])

    def baseline():
        with explicit_attention(model):
            model(x)

    fast_bf16 = optimize_for_inference(model, dtype=torch.bfloat16)
    xb = xf.to(torch.bfloat16)
    return model, shape, {"baseline": baseline, "eager": lambda: model(x), "fast": lambda: fast(xf),
                          "fast-bf16": lambda: fast_bf16(xb)}


def training_paths(name: str, batch: int, size):
    shape = None
    paths = {}
    for label, fused, amp in (("baseline", False, False), ("fast", True, False), ("fast-bf16", True, True)):
        torch.manual_seed(0)
        model = uniformer.create_model(name).train()
        shape = _input_shape(model, batch, size)
        x, y = torch.randn(shape), torch.randint(0, model.num_classes, (batch,))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True if fused else None)

        def step(model=model, x=x, y=y, opt=opt, amp=amp, label=label):
            with explicit_attention(model) if label == "baseline" else nullcontext(), \
                    torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                out = model(x)
                out = out[0] if isinstance(out, (tuple, list)) else out
                loss = F.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        paths[label] = step
    return uniformer.create_model(name).eval(), shape, paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--train", action="store_true")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    build = training_paths if args.train else inference_paths
    model, shape, paths = build(args.model, args.batch_size, args.img_size)
    macs = count_flops(model, (1, *shape[1:])) / 1e9
    times = {k: [] for k in paths}
    peaks = []
    context = nullcontext() if args.train else torch.inference_mode()
    with context:
        for fn in paths.values():  # warm-up
            fn()
        for _ in range(args.rounds):
            peaks.append(matmul_peak_gflops(iters=3))
            for k, fn in paths.items():
                times[k].append(_time(fn))
    ratios = {k: statistics.median(b / t for b, t in zip(times["baseline"], v)) for k, v in times.items()}
    peak = statistics.median(peaks)
    report = dict(model=args.model, input=list(shape), train=args.train, threads=torch.get_num_threads(),
                  gflops=macs, matmul_peak_gflops=dict(median=peak, min=min(peaks), max=max(peaks)), paths={})
    unit = "steps/s" if args.train else "img/s"
    print(f"{args.model} {'training' if args.train else 'inference'} {shape}, {torch.get_num_threads()} threads, "
          f"matmul peak median {peak:.0f} (min {min(peaks):.0f}, max {max(peaks):.0f}) GFLOP/s")
    for k, v in times.items():
        t = statistics.median(v)
        rate = 1 / t if args.train else args.batch_size / t
        frac = "" if args.train else f"  {100 * 2 * macs * args.batch_size / t / peak:5.1f}% of peak"
        report["paths"][k] = dict(seconds=t, rate=rate, speedup_vs_baseline=ratios[k])
        print(f"  {k:<10} {rate:8.3f} {unit}  x{ratios[k]:.2f} vs baseline{frac}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
