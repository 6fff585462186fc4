"""Recipe stage kind `quantize`: uniform n-bit (PTQ or QAT), k-means sharing (+ centroid fine-tuning),
BinaryConnect, or real int8 deployment.

    - quantize: {method: kmeans, bits: {Conv2d: 8, Linear: 5}, epochs: 1}
    - quantize: {method: uniform, bits: 4, epochs: 2}        # QAT; epochs 0 = post-training
    - quantize: {method: binary, epochs: 5}
    - quantize: {method: int8}                                # measured as the int8 program in ONNX Runtime
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from netcompress.core.config import Config
from netcompress.train.stage import StageKind, StageResult


class QuantizeConfig(Config):
    """`quantize:` stage. Fields not used by the chosen method must stay at their defaults."""

    method: Literal["uniform", "kmeans", "binary", "int8"] = Field(
        "kmeans", description="uniform n-bit (PTQ, or QAT with epochs), kmeans weight sharing, binary "
        "(BinaryConnect), int8 deployment")
    bits: int | dict[str, int] = Field(8, description="uniform: 2..8; kmeans: int or {layer type or name: bits}")
    epochs: float | None = Field(None, ge=0, description="QAT / centroid fine-tune / BinaryConnect epochs "
                                 "(default: kmeans 1, uniform 0 = PTQ, binary train.epochs)")
    lr: float | None = Field(None, gt=0, description="default: train.lr x 0.1 (binary: train.lr)")
    max_steps: int | None = Field(None, ge=1, description="stop the training after this many steps")
    init: Literal["linear", "density", "random", "best"] = Field("linear", description="kmeans: centroid initialisation")
    reduce: Literal["sum", "mean"] = Field("mean", description="kmeans fine-tune: centroid gradient = sum or mean")
    codebook: Literal["float16", "float32"] = Field("float16", description="kmeans: precision of the shared values")
    biases: Literal["float16", "float32"] = Field("float32", description="kmeans: round the clustered layers' biases")
    per_channel: bool = Field(True, description="uniform: one scale per output channel")
    symmetric: bool = Field(True, description="uniform: symmetric range (no zero point)")
    observer: Literal["minmax", "mse", "percentile"] = Field("mse", description="uniform: how each weight range is "
                                                             "chosen (min/max, MSE-optimal clip, percentile)")
    stochastic: bool = Field(False, description="binary: stochastic binarisation")
    calibration_samples: int = Field(256, ge=1, description="int8: activation calibration samples")
    runtime: Literal["onnxruntime", "executorch"] = Field(
        "onnxruntime", description="int8: ONNX QDQ run by ONNX Runtime, or PT2E + XNNPACK run by ExecuTorch")
    threads: int = Field(1, ge=1, description="int8: the runtime's thread count when measured")

    @model_validator(mode="after")
    def _check(self) -> "QuantizeConfig":
        allowed = {"kmeans": {"bits", "epochs", "lr", "max_steps", "init", "reduce", "codebook", "biases"},
                   "uniform": {"bits", "epochs", "lr", "max_steps", "per_channel", "symmetric", "observer"},
                   "binary": {"epochs", "lr", "max_steps", "stochastic"},
                   "int8": {"calibration_samples", "runtime", "threads"}}[self.method]
        extra = sorted(self.model_fields_set - allowed - {"method"})
        if extra:
            raise ValueError(f"{', '.join(extra)}: not used by method {self.method} (it takes {', '.join(sorted(allowed))})")
        if self.method == "uniform" and (not isinstance(self.bits, int) or not 2 <= self.bits <= 8):
            raise ValueError("bits: uniform quantization takes one integer in 2..8")
        if self.method == "kmeans":
            vals = self.bits.values() if isinstance(self.bits, dict) else [self.bits]
            if not all(1 <= b <= 16 for b in vals):
                raise ValueError("bits: k-means bits must be in 1..16")
        return self


def _histogram(ctx, model: nn.Module, info: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    mods = dict(model.named_modules())
    names = sorted(info, key=lambda n: -info[n]["nonzero"])[:2]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        w = mods[name].weight.detach().flatten()
        w = w[w != 0].numpy()
        ax.hist(w, bins=120, color="#4a7ab5")
        for c in info[name].get("centroids", []):
            ax.axvline(c, color="#d62728", lw=0.6, alpha=0.7)
        ax.set_title(f"{name}: {info[name]['clusters']} shared values ({info[name]['bits']} bits)", fontsize=9)
        ax.set_xlabel("weight (non-zero)")
    ctx.figure("weight histogram with centroids", fig)


def run_quantize(ctx, model: nn.Module, cfg: QuantizeConfig):
    default_epochs = {"kmeans": 1.0, "uniform": 0.0, "binary": ctx.train.epochs}.get(cfg.method, 0.0)
    over = {**ctx.budget(default_epochs if cfg.epochs is None else cfg.epochs, cfg.lr,
                         lr_factor=1.0 if cfg.method == "binary" else 0.1), "max_steps": cfg.max_steps}
    epochs = over["epochs"]
    history: list[dict[str, float]] = []
    if cfg.method == "kmeans":
        from netcompress.quantize.cluster import CentroidFineTune, cluster_

        info = cluster_(model, bits=cfg.bits, init=cfg.init, seed=ctx.seed, codebook_dtype=cfg.codebook)
        if epochs > 0:
            ft = CentroidFineTune(cfg.reduce, codebook_dtype=cfg.codebook)
            history = ctx.fit(model, over, methods=[ft], tag="centroids").to_list()
            ft.finalize(model)
            _refresh_centroids(model, info)
        if cfg.biases == "float16":
            mods = dict(model.named_modules())
            with torch.no_grad():
                for name in info:
                    b = getattr(mods[name], "bias", None)
                    if b is not None:
                        b.copy_(b.half().to(b.dtype))
        _histogram(ctx, model, info)
        extra = {"method": "kmeans", "layers": {n: {k: v for k, v in d.items() if k != "centroids"} for n, d in info.items()}}
        return StageResult(model, extra=extra, history=history)
    if cfg.method == "uniform":
        from netcompress.quantize.uniform import UniformQAT, quantize_

        if epochs > 0:
            qat = UniformQAT(cfg.bits, cfg.symmetric, cfg.per_channel, cfg.observer)
            history = ctx.fit(model, over, methods=[qat], tag="qat").to_list()
            qat.finalize(model)
            info = {"qat_epochs": epochs}
        else:
            info = quantize_(model, cfg.bits, cfg.symmetric, cfg.per_channel, cfg.observer)
        return StageResult(model, extra={"method": "uniform", "bits": cfg.bits, "layers": info}, history=history)
    if cfg.method == "binary":
        from netcompress.quantize.binary import BinaryConnect

        bc = BinaryConnect(stochastic=cfg.stochastic, seed=ctx.seed)
        if epochs > 0:
            history = ctx.fit(model, over, methods=[bc], tag="binary").to_list()
        else:
            bc.prepare(model)
        bc.finalize(model)
        names = {m: n for n, m in model.named_modules()}
        return StageResult(model, extra={"method": "binary", "stochastic": cfg.stochastic,
                                         "H": {names[m]: h for m, h in bc.H.items()}}, history=history)
    # int8
    from netcompress.quantize.deploy import int8_layers, int8_params, int8_quantize, save_int8

    from netcompress.quantize.deploy import SUFFIX

    q = int8_quantize(model, ctx.data.calibration(cfg.calibration_samples), runtime=cfg.runtime, threads=cfg.threads,
                      example=ctx.data.example)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    path = save_int8(q, ctx.out_dir / f"model.int8{SUFFIX[cfg.runtime]}")
    return StageResult(model, file=path, measure_model=q,
                       extra={"method": "int8", "runtime": cfg.runtime, "threads": cfg.threads, "int8_layers": int8_layers(q),
                              "int8_file": str(path), "int8_params": int8_params(q)})


def _refresh_centroids(model: nn.Module, info: dict[str, Any]) -> None:
    import torch

    mods = dict(model.named_modules())
    for name, d in info.items():
        w = mods[name].weight.detach().flatten()
        d["centroids"] = [float(c) for c in torch.unique(w[w != 0])]


def register(stages) -> None:
    help = "quantize weights: uniform n-bit (PTQ/QAT), kmeans sharing, binary (BinaryConnect), int8 deployment"
    stages.register("quantize", StageKind(QuantizeConfig, run_quantize, help))
    from netcompress.quantize import weight_only_stages

    weight_only_stages.register(stages)
