"""Speed and memory benchmarks (``uniformer bench``), following timm's ``benchmark.py`` conventions: a few warm-up
iterations, then the median over timed iterations of a fixed random input; inference under ``torch.inference_mode``;
a training step = forward + cross-entropy + backward + AdamW step.

Reported per model and *path*: images/s at the large batch (clips/s for video), latency at batch 1, training
steps/s, peak resident memory of the process that measured it (every model runs in a fresh subprocess, so peaks do
not mix), fvcore GFLOPs (multiply-adds, the papers' convention) and the achieved compute — ``2 × MACs × images/s`` —
as a fraction of the machine's fp32 matmul peak measured in the same run.

Paths: ``baseline`` (attention as explicit softmax(q kᵀ)v matmuls, as the official code — the unoptimised eager
reference), ``eager`` (``F.scaled_dot_product_attention``), ``fast`` (:func:`uniformer.fast.optimize_for_inference`:
BatchNorms folded, channels-last), ``compile`` (``fast`` + ``torch.compile``) and ``fast-bf16`` (``fast`` with bf16
weights and inputs: the AMX / AVX-512-bf16 path; its "% of peak" is relative to the fp32 matmul peak).
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import platform
import queue as queue_module
import resource
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._io import atomic_path
from .engine.inference import default_input
from .fast import input_memory_format, optimize_for_inference
from .flops import count_flops, explicit_attention
from .models.factory import create_model, list_models

__all__ = ["BenchResult", "matmul_peak_gflops", "bench_model", "run_benchmarks", "format_table", "save_chart",
           "write_report", "PEERS", "PATHS"]

PATHS = ("baseline", "eager", "fast", "compile", "fast-bf16")
# timm peers of similar size/speed class (the light models are compared with fastvit_sa12 as well)
PEERS = ("caformer_s18", "convnext_tiny", "resnet50", "efficientformer_l1", "fastvit_sa12")


@dataclass
class BenchResult:
    model: str
    path: str
    input: str
    params_m: float
    gflops: float  # fvcore multiply-adds per sample
    throughput: float = math.nan  # samples/s at batch_size
    latency_ms: float = math.nan  # batch 1
    train_steps_s: float = math.nan
    train_samples_s: float = math.nan
    peak_rss_mb: float = math.nan
    achieved_gflops_s: float = math.nan  # 2 * MACs * throughput / 1e9
    peak_fraction: float = math.nan  # of the fp32 matmul peak
    batch_size: int = 32
    threads: int = 1
    notes: List[str] = field(default_factory=list)


def _timed(fn, warmup: int, iters: int) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak_gflops(n: int = 2048, iters: int = 10) -> float:
    """Measured fp32 matmul throughput (GFLOP/s, 2n³ per product; best of ``iters``) with the current threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b), 0, 1) for _ in range(iters))
    return 2 * n ** 3 / best / 1e9


def _build(name: str) -> nn.Module:
    model = create_model(name) if name in list_models() else timm.create_model(name)
    return model.eval()


def _input_shape(model: nn.Module, batch: int, size: Optional[int]) -> tuple:
    return (batch, *default_input(model, size))


def _prepare(model: nn.Module, path: str) -> tuple:
    """(model to run, context manager, input memory format, input dtype) for a path."""
    if path == "baseline":
        return model, explicit_attention(model), torch.contiguous_format, torch.float32
    if path == "eager":
        return model, nullcontext(), torch.contiguous_format, torch.float32
    dtype = torch.bfloat16 if path == "fast-bf16" else torch.float32
    fast = optimize_for_inference(model, compile=path == "compile", dtype=dtype)
    return fast, nullcontext(), input_memory_format(model)[0], dtype


def bench_model(name: str, path: str = "eager", batch_size: int = 32, size: Optional[int] = None,
                train: bool = True, warmup: int = 2, iters: int = 5, peak_gflops: Optional[float] = None,
                amp: bool = False) -> BenchResult:
    """Measure one model on one path in this process (see the module docstring). ``peak_gflops`` defaults to a
    matmul measurement taken here, just before the model's; ``amp`` runs everything under bf16 autocast (fp16 on
    CUDA is not measured here)."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if peak_gflops is None:
        peak_gflops = matmul_peak_gflops()
    model = _build(name)
    shape = _input_shape(model, batch_size, size)
    macs = count_flops(model, (1, *shape[1:])) / 1e9
    result = BenchResult(name, path, "x".join(map(str, shape[1:])), sum(p.numel() for p in model.parameters()) / 1e6,
                         macs, batch_size=batch_size, threads=torch.get_num_threads())
    if path == "baseline" and not any(getattr(m, "fused_attn", None) is not None for m in model.modules()):
        result.notes.append("no uniformer attention: baseline = eager")
    run, context, fmt, dtype = _prepare(model, path)
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=fmt)
    x1 = x[:1].clone().contiguous(memory_format=fmt)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if amp else nullcontext()
    if amp:
        result.notes.append("bf16 autocast")
    with context, torch.inference_mode(), autocast:
        result.throughput = batch_size / _timed(lambda: run(x), warmup, iters)
        result.latency_ms = 1000 * _timed(lambda: run(x1), warmup, max(iters, 10))
    result.achieved_gflops_s = 2 * macs * result.throughput
    result.peak_fraction = result.achieved_gflops_s / peak_gflops
    result.notes.append(f"matmul peak {peak_gflops:.0f} GFLOP/s")
    if train and path in ("baseline", "eager"):
        model.train()
        # the engine's optimizer: fused AdamW step on the fast path, PyTorch's default loop on the baseline
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True if path != "baseline" else None)
        target = torch.randint(0, 1000, (batch_size,))

        def step() -> None:
            out = model(x)
            out = out[0] if isinstance(out, (tuple, list)) else out
            loss = F.cross_entropy(out, target % out.shape[-1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        with explicit_attention(model) if path == "baseline" else nullcontext(), \
                torch.autocast("cpu", dtype=torch.bfloat16) if amp else nullcontext():
            seconds = _timed(step, 1, max(2, iters // 2))
        result.train_steps_s = 1 / seconds
        result.train_samples_s = batch_size / seconds
    result.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _worker(queue: "mp.Queue", name: str, path: str, kwargs: Dict[str, Any], threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        queue.put(asdict(bench_model(name, path, **kwargs)))
    except Exception as e:  # reported in the table, the run goes on
        queue.put({"model": name, "path": path, "error": f"{type(e).__name__}: {e}"})


def _result(queue: "mp.Queue", proc: "mp.Process") -> Dict[str, Any]:
    """The worker's row, or an error row if it died without one (out of memory, a crash in a kernel)."""
    while True:
        try:
            return queue.get(timeout=5)
        except queue_module.Empty:
            if not proc.is_alive():
                return {"error": f"the benchmark process died (exit code {proc.exitcode})"}


def run_benchmarks(models: Sequence[str], paths: Sequence[str] = ("baseline", "eager", "fast"), batch_size: int = 32,
                   size: Optional[int] = None, threads: Optional[int] = None, train: bool = True, iters: int = 5,
                   amp: bool = False, peers: Sequence[str] = (), log=print) -> Dict[str, Any]:
    """Benchmark every (model, path) in its own subprocess — ``peers`` on their own (eager) path only; returns
    ``{"machine": …, "results": […]}``."""
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    peak = matmul_peak_gflops()
    machine = dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), threads=threads,
                   torch=torch.__version__, matmul_peak_gflops=peak, platform=platform.platform())
    log(f"fp32 matmul peak with {threads} thread(s): {peak:.1f} GFLOP/s")
    ctx = mp.get_context("spawn")
    results = []
    jobs = [(name, path) for name in models for path in paths] + [(name, "eager") for name in peers]
    for name, path in jobs:
        queue = ctx.Queue()
        proc = ctx.Process(target=_worker, args=(queue, name, path, dict(batch_size=batch_size, size=size,
                                                                            train=train, iters=iters,
                                                                            amp=amp), threads))
        proc.start()
        row = _result(queue, proc)
        proc.join()
        row = dict(row, model=name, path=path)
        results.append(row)
        if "error" in row:
            log(f"{name:<24} {path:<9} failed: {row['error']}")
        else:
            unit = "clips/s" if row["input"].count("x") == 3 else "img/s"
            log(f"{name:<24} {path:<9} {row['throughput']:8.1f} {unit}  {row['latency_ms']:7.1f} ms  "
                f"{row['peak_fraction'] * 100:5.1f}% of peak  train {row['train_steps_s']:.3f} steps/s")
    return dict(machine=machine, batch_size=batch_size, amp=amp, results=results)


def format_table(report: Dict[str, Any]) -> str:
    """A Markdown table of a report."""
    b = report["batch_size"]
    lines = [f"| model | path | input | params (M) | GFLOPs | samples/s @{b} | latency @1 (ms) | % of matmul peak | "
             f"train steps/s @{b} | peak RSS (MB) |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| `{r['model']}` | {r['path']} | failed: {r['error']} |||||||")
            continue
        train = "–" if math.isnan(r["train_steps_s"]) else f"{r['train_steps_s']:.3f}"
        lines.append(f"| `{r['model']}` | {r['path']} | {r['input']} | {r['params_m']:.1f} | {r['gflops']:.2f} | "
                     f"{r['throughput']:.1f} | {r['latency_ms']:.1f} | {100 * r['peak_fraction']:.0f}% | {train} | "
                     f"{r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def save_chart(report: Dict[str, Any], output: os.PathLike) -> Path:
    """A horizontal bar chart of images/s per model and path (no accuracy involved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if "error" not in r]
    labels = [f"{r['model']} ({r['path']})" for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.2))
    colours = {"baseline": "#bbbbbb", "eager": "#4c72b0", "fast": "#dd8452", "compile": "#55a868",
               "fast-bf16": "#c44e52"}
    ax.barh(labels, [r["throughput"] for r in rows], color=[colours.get(r["path"], "#888888") for r in rows])
    ax.invert_yaxis()
    m = report["machine"]
    ax.set_xlabel(f"images (clips) per second at batch {report['batch_size']}, {m['threads']} threads")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(output)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def write_report(report: Dict[str, Any], output_dir: os.PathLike) -> List[Path]:
    """``bench.json``, ``bench.md`` and ``bench.png`` in ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "bench.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    with atomic_path(out / "bench.md") as tmp:
        tmp.write_text(format_table(report) + "\n")
    return [out / "bench.json", out / "bench.md", save_chart(report, out / "bench.png")]
