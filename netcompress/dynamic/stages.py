"""Recipe stage kind `dynamic`: add exits (or use a multi-exit model), train them, set a policy.

```yaml
- dynamic: {exits: [features.2], epochs: 2, budget: 0.5}        # a trained lenet5
- dynamic: {epochs: 5, train_backbone: true, budget: 0.4}        # msdnet-small: exits built in
- dynamic: {exits: [features.1], head: {hidden: 0}, accuracy_drop: 0}   # no accuracy lost on held-out data
- dynamic: {}                                                     # exits near 25, 50, 75 % of the MACs
```
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from netcompress.core.config import Config
from netcompress.core.errors import NetcompressError
from netcompress.dynamic.base import MultiExitBase, early_exit_predict
from netcompress.dynamic.early_exit import HeadConfig, MultiExitModel, early_exit, segment_mode
from netcompress.dynamic.lm_exit import (EarlyExitLM, decode_latency, is_decoder_lm, lm_early_exit, lm_exit_eval,
                                         token_costs)
from netcompress.dynamic.policy import (calibrate_accuracy, calibrate_budget, compare_latency, exit_macs,
                                        exit_outputs, full_macs, plot_curve, policy_report, tradeoff_curve)
from netcompress.dynamic.training import ExitTraining, FrozenBackbone, sdn_weights
from netcompress.measure.metrics import count_macs
from netcompress.train.stage import StageKind, StageResult


class DynamicConfig(Config):
    """Config of the `dynamic` stage.

    One of `threshold` (fixed), `budget` (average MACs as a fraction of the full network) or
    `accuracy_drop` (the cheapest threshold keeping the full network's accuracy), both calibrated on
    `holdout` training samples that the exits do not train on; budget 0.5 by default (halfway
    from the first exit to the full network when that exit costs more).

    A decoder language model (netcompress's GPT) gets per-token early-exit decoding instead
    (`netcompress.dynamic.lm_exit`): exits are blocks (default one halfway), they
    share the model's final norm and LM head (`head` must stay default), the whole model trains
    with the exit losses (`train_backbone` may not be false), accuracy means next-token accuracy,
    the default calibration is `accuracy_drop: 0` (a MACs budget loses perplexity fast on small
    models: `benchmarks/results/B12_lm_exit.md`), samples are windows, and the latency is decoding
    `latency_samples` tokens in requests of 64 (`latency_batch` prompts decoded together, 1 unless set).
    """

    exits: list[str] = Field(default_factory=list, description="backbone module names; empty: the model's own exits, "
                             "or up to three chosen near 25, 50 and 75 % of its MACs (default_exits)")
    head: HeadConfig = Field(HeadConfig(), description="exit head: {pool, hidden}")
    weights: Literal["auto", "sdn", "uniform"] | list[float] = Field(
        "auto", description="auto: sdn when the backbone trains, uniform (independent heads) when frozen")
    ramp_epochs: int = Field(0, ge=0, description="SDN weight ramp over this many epochs (0: fixed weights)")
    distill: float = Field(0.0, ge=0, le=1, description="self-distillation share from the last exit")
    temperature: float = Field(3.0, gt=0, description="self-distillation temperature")
    train_backbone: bool = Field(False, description="false: train only the heads (the final exit stays the input)")
    epochs: float | None = Field(2.0, ge=0, description="exit-training epochs")
    lr: float | None = Field(None, gt=0, description="exit-training learning rate (default train.lr)")
    max_steps: int | None = Field(None, ge=1, description="stop the exit training after this many steps")
    policy: Literal["max_softmax", "entropy"] = Field("max_softmax", description="confidence measure of the exits")
    threshold: float | list[float] | None = Field(None, description="fixed exit threshold(s) instead of a budget")
    budget: float | None = Field(None, gt=0, description="average MACs as a fraction of the full network "
                                 "(default when no threshold and no accuracy_drop: 0.5, or halfway from the first "
                                 "exit's cost to 1 when that exit costs more)")
    accuracy_drop: float | None = Field(None, ge=0, le=1, description="instead of a MACs budget: the cheapest "
                                        "threshold keeping the full network's held-out accuracy within this "
                                        "fraction (0: none lost)")
    holdout: int = Field(500, ge=1, description="training samples held out for calibration")
    latency: bool = Field(True, description="measure full vs early-exit CPU time")
    latency_batch: int = Field(64, ge=1, description="batch size of the latency measurement")
    latency_samples: int = Field(512, ge=1, description="test samples timed")

    @model_validator(mode="after")
    def _one_of(self) -> "DynamicConfig":
        given = [k for k in ("threshold", "budget", "accuracy_drop") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of threshold, budget, accuracy_drop (got {' and '.join(given)})")
        return self


def holdout_split(data: Any, n: int) -> tuple[Any, list[tuple[torch.Tensor, torch.Tensor]]]:
    """(a bundle training on all but the first `n` training samples, batches of those `n`)."""
    ds = data.train_set
    if len(ds) <= n:
        raise NetcompressError(f"dynamic: holdout {n} needs more than the {len(ds)} training samples")
    if isinstance(ds, torch.utils.data.TensorDataset):
        x, y = ds.tensors
        rest = torch.utils.data.TensorDataset(x[n:], y[n:])
        held = [(x[i:i + 256], y[i:i + 256]) for i in range(0, n, 256)]
    else:
        rest = torch.utils.data.Subset(ds, range(n, len(ds)))
        held = list(torch.utils.data.DataLoader(torch.utils.data.Subset(ds, range(n)), batch_size=256))
    return dataclasses.replace(data, train_set=rest), held


def exit_labels(model: MultiExitBase) -> list[str]:
    if isinstance(model, MultiExitModel):
        return list(model.exit_names) + ["final"]
    return [f"exit{k}" for k in range(model.num_exits - 1)] + ["final"]


def _weights(cfg: DynamicConfig, positions: list[float], joint: bool) -> list[float]:
    """Each early exit's loss weight; `positions` are the exits' relative depths (SDN's q_i) and
    `joint` says whether the backbone trains too ('auto' is then SDN's weights, else uniform)."""
    if cfg.weights == "sdn" or (cfg.weights == "auto" and joint):
        return sdn_weights(positions)
    if cfg.weights in ("uniform", "auto"):
        return [1.0] * len(positions)
    if len(cfg.weights) != len(positions):
        raise NetcompressError(f"dynamic: weights: {len(cfg.weights)} given for {len(positions)} early exits")
    return list(cfg.weights)


def _calibrate(cfg: DynamicConfig, held_out: list[torch.Tensor], held_y: torch.Tensor, cum: list[int], full: int,
               default: str) -> tuple[float | list[float], dict[str, Any] | None]:
    """The threshold from `cfg` (fixed, a MACs budget or an accuracy drop, calibrated on the held-out
    outputs) and what the calibration reached; `default` ('budget' = 0.5, or 'accuracy' = no drop)
    applies when `cfg` names none."""
    if cfg.threshold is not None:
        return cfg.threshold, None
    if cfg.budget is not None or (cfg.accuracy_drop is None and default == "budget"):
        # the default: half the MACs, or halfway from the first exit to the full network when that
        # exit (its head included) costs more (a small model whose stem is most of its MACs)
        first = cum[0] / full
        budget = cfg.budget if cfg.budget is not None else 0.5 if first < 0.5 else (first + 1) / 2
        threshold, reached = calibrate_budget(held_out, cum, budget * full, cfg.policy)
        return threshold, {"budget": budget, "budget_macs": budget * full, "holdout_avg_macs": reached,
                           "holdout_fraction": reached / full}
    drop = cfg.accuracy_drop if cfg.accuracy_drop is not None else 0.0
    threshold, reached, acc = calibrate_accuracy(held_out, held_y, cum, drop, cfg.policy)
    return threshold, {"accuracy_drop": drop, "holdout_avg_macs": reached, "holdout_fraction": reached / full,
                       "holdout_accuracy": acc,
                       "holdout_full_accuracy": (held_out[-1].argmax(1) == held_y).float().mean().item()}


def run_dynamic(ctx, model: nn.Module, cfg: DynamicConfig):
    """The `dynamic` stage: exits -> joint training -> policy (threshold, calibrated budget or accuracy) ->
    per-exit report, accuracy-MACs curve (figure), measured latency."""
    data = ctx.data
    example = data.example
    if isinstance(model, EarlyExitLM) or is_decoder_lm(model):
        return run_lm_dynamic(ctx, model, cfg)
    if isinstance(model, MultiExitBase):
        if cfg.exits:
            raise NetcompressError("dynamic: the model already has exits; leave `exits` empty")
        mx = model
    else:
        mx = early_exit(model, cfg.exits or None, cfg.head, example_inputs=example)
    cum = exit_macs(mx, example)
    full = full_macs(mx, example)
    weights = _weights(cfg, [c / full for c in cum[:-1]], cfg.train_backbone)
    train_data, held = holdout_split(data, cfg.holdout)
    history: list = []
    if cfg.epochs and cfg.epochs > 0:
        methods: list = [ExitTraining(weights, cfg.ramp_epochs, cfg.distill, cfg.temperature)]
        frozen = None if cfg.train_backbone else FrozenBackbone()
        if frozen is not None:
            methods.insert(0, frozen)
        mx.set_policy_(cfg.policy, None)
        try:
            hist = ctx.fit(mx, {"epochs": cfg.epochs, "lr": cfg.lr, "max_steps": cfg.max_steps},
                           methods=methods, tag="exits", data=train_data)
        finally:
            if frozen is not None:
                frozen.finalize(mx)
        history = hist.to_list()
    mx.eval()
    held_out, held_y = exit_outputs(mx, held)
    threshold, calib = _calibrate(cfg, held_out, held_y, cum, full, "budget")
    mx.set_policy_(cfg.policy, threshold)
    test_out, y = exit_outputs(mx, data.loader("test", shuffle=False))
    names = exit_labels(mx)
    rep = policy_report(test_out, y, cum, threshold, cfg.policy, names)
    # the real batched inference must agree with the simulation
    xs = torch.cat([x for x, _ in data.loader("test", batch_size=256, shuffle=False)])
    preds, exit_at = early_exit_predict(mx, xs.to(next(mx.parameters()).device))
    real_acc = (preds.argmax(1).cpu() == y).float().mean().item()
    full_acc = (test_out[-1].argmax(1) == y).float().mean().item()
    curve = tradeoff_curve(test_out, y, cum, cfg.policy)
    extra: dict[str, Any] = {
        "policy": cfg.policy, "thresholds": mx.thresholds, "calibration": calib,
        "accuracy": real_acc, "full_accuracy": full_acc, "avg_macs": rep["avg_macs"], "full_macs": full,
        "avg_macs_fraction": rep["avg_macs"] / full, "exits": rep["exits"], "curve": curve,
        "exit_modules": list(mx.exit_names) if isinstance(mx, MultiExitModel) else None,
        "exit_weights": weights, "segment_mode": segment_mode(mx) if isinstance(mx, MultiExitModel) else "native",
        "real_exit_share": [float((exit_at == k).float().mean()) for k in range(mx.num_exits)],
    }
    if cfg.latency:
        extra["latency"] = compare_latency(mx, xs[: cfg.latency_samples], cfg.latency_batch)
    ctx.figure("accuracy vs average MACs", plot_curve(curve, rep["exits"], full, full_acc, rep,
                                                      title=f"{ctx.name}: {cfg.policy}"))
    # the runner would count one example image's path; report what the policy costs on the test set
    metrics: dict[str, Any] = {"macs": int(round(rep["avg_macs"])), "accuracy": real_acc}
    if cfg.latency:
        lat = extra["latency"]
        metrics["latency_ms_b64"] = lat["early_exit_ms"] * 64 / lat["samples"] if lat["batch_size"] == 64 else None
        if metrics["latency_ms_b64"] is None:
            del metrics["latency_ms_b64"]
    return StageResult(mx, extra=extra, history=history, metrics=metrics)


def run_lm_dynamic(ctx, model: nn.Module, cfg: DynamicConfig):
    """The `dynamic` stage on a decoder LM: exits after blocks -> joint training (the exit losses of
    every exit through the shared head, SDN weights) -> threshold (fixed, MACs budget or token
    accuracy on held-out windows) -> test perplexity of the early-exit model itself and decoding time."""
    data = ctx.data
    if "head" in cfg.model_fields_set and cfg.head != HeadConfig():
        raise NetcompressError("dynamic: head: a language model's exits share its final norm and LM head; leave head out")
    if "train_backbone" in cfg.model_fields_set and not cfg.train_backbone:
        raise NetcompressError("dynamic: train_backbone: false leaves a language model's shared exit head nothing to "
                               "train; leave it out (the whole model trains with the exit losses)")
    if isinstance(model, EarlyExitLM):
        if cfg.exits:
            raise NetcompressError("dynamic: the model already has exits; leave `exits` empty")
        ee = model
    else:
        ee = lm_early_exit(model, cfg.exits)
    if isinstance(cfg.threshold, list):
        raise NetcompressError("dynamic: threshold: a language model's exits share one threshold; give a number")
    cum, full = token_costs(ee)
    if cfg.budget is not None and cfg.budget * full < cum[0]:  # before any training
        raise NetcompressError(f"dynamic: budget {cfg.budget} is below the first exit's cost per token "
                               f"({cum[0] / full:.2f} of the model); raise it or add an earlier exit")
    weights = _weights(cfg, [(i + 1) / len(ee.lm.blocks) for i in ee.exits], True)
    train_data, held = holdout_split(data, cfg.holdout)
    history: list = []
    if cfg.epochs and cfg.epochs > 0:
        ee.set_policy_(cfg.policy, None)
        hist = ctx.fit(ee, {"epochs": cfg.epochs, "lr": cfg.lr, "max_steps": cfg.max_steps},
                       methods=[ExitTraining(weights, cfg.ramp_epochs, cfg.distill, cfg.temperature)], tag="exits",
                       data=train_data)
        history = hist.to_list()
    ee.eval()
    held_out, held_y = exit_outputs(ee, held)
    threshold, calib = _calibrate(cfg, held_out, held_y, cum, full, "accuracy")  # LM default: no accuracy lost
    ee.set_policy_(cfg.policy, float(threshold))
    test = list(data.loader("test", shuffle=False))
    real = lm_exit_eval(ee, test)
    test_out, y = exit_outputs(ee, test)
    names = [f"blocks.{i}" for i in ee.exits] + ["final"]
    rep = policy_report(test_out, y, cum, threshold, cfg.policy, names)
    costs = torch.tensor(cum, dtype=torch.float64)
    avg_macs = float((costs * torch.tensor(real["exit_share"], dtype=torch.float64)).sum())
    extra: dict[str, Any] = {
        "policy": cfg.policy, "thresholds": [float(threshold)], "calibration": calib, "language_model": True,
        "accuracy": real["token_accuracy"], "full_accuracy": (test_out[-1].argmax(1) == y).float().mean().item(),
        "perplexity": real["perplexity"], "full_perplexity": math.exp(F.cross_entropy(test_out[-1], y).item()),
        "avg_macs": avg_macs, "full_macs": full, "avg_macs_fraction": avg_macs / full, "exits": rep["exits"],
        "curve": tradeoff_curve(test_out, y, cum, cfg.policy), "exit_weights": weights,
        "real_exit_share": real["exit_share"], "simulated_accuracy": rep["accuracy"],
    }
    if cfg.latency:
        batch = cfg.latency_batch if "latency_batch" in cfg.model_fields_set else 1
        x = torch.cat([xb for xb, _ in test])
        prompt = min(32, x.shape[1] // 2)
        reqs = max(1, cfg.latency_samples // (64 * batch))
        if len(x) < reqs * batch:
            reqs = max(1, len(x) // batch)
        prompts = x[: reqs * batch, :prompt].reshape(reqs, batch, prompt)
        extra["latency"] = decode_latency(ee, prompts.to(next(ee.parameters()).device), 64)
    ctx.figure("token accuracy vs average MACs", plot_curve(extra["curve"], rep["exits"], full, extra["full_accuracy"],
                                                            rep, title=f"{ctx.name}: {cfg.policy}"))
    # the runner counts one example window of the model without exits: report the policy's share of it
    window = count_macs(ee.lm, data.example)
    extra["window_macs"] = window
    metrics: dict[str, Any] = {"macs": int(round(avg_macs / full * window))}
    return StageResult(ee, extra=extra, history=history, metrics=metrics)


def summary(ex: dict[str, Any]) -> str:
    """The per-exit table, accuracy and average MACs of a `dynamic` stage's extra."""
    lines = [f"policy {ex['policy']} thresholds {[round(t, 4) for t in ex['thresholds']]}",
             f"{'exit':>14s} {'MACs':>12s} {'acc(all)':>9s} {'share':>7s} {'acc(exited)':>11s}"]
    for e in ex["exits"]:
        acc_ex = f"{100 * e['accuracy_exited']:.2f}" if e["accuracy_exited"] is not None else "-"
        lines.append(f"{e['name']:>14s} {e['macs']:>12,d} {100 * e['accuracy_all']:>9.2f} {100 * e['share']:>6.1f}% "
                     f"{acc_ex:>11s}")
    what = "token accuracy" if ex.get("language_model") else "accuracy"
    lines.append(f"{what} {100 * ex['accuracy']:.2f}% (full network {100 * ex['full_accuracy']:.2f}%), average MACs "
                 f"{ex['avg_macs']:,.0f} = {100 * ex['avg_macs_fraction']:.1f}% of {ex['full_macs']:,}")
    if ex.get("language_model"):
        lines.append(f"test perplexity {ex['perplexity']:.3f} (full network {ex['full_perplexity']:.3f})")
        if "latency" in ex:
            lat = ex["latency"]
            lines.append(f"CPU time to decode {lat['tokens']} tokens (batch {lat['batch_size']}): full "
                         f"{lat['full_ms']:.1f} ms, early exit {lat['early_exit_ms']:.1f} ms ({lat['speedup']:.2f}x)")
        return "\n".join(lines)
    if "latency" in ex:
        lat = ex["latency"]
        lines.append(f"CPU time for {lat['samples']} samples in batches of {lat['batch_size']}: full "
                     f"{lat['full_ms']:.2f} ms, early exit {lat['early_exit_ms']:.2f} ms ({lat['speedup']:.2f}x)")
    return "\n".join(lines)


def register(stages) -> None:
    text = ("early exits: heads + exit training + threshold / MACs-budget policy (BranchyNet, SDN, MSDNet; "
            "per-token exits for language models, CALM)")
    stages.register("dynamic", StageKind(DynamicConfig, run_dynamic, text, summary=summary))
