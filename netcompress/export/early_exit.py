"""Early-exit models in a deployment runtime: one graph per stage, the exit policy outside the graph,
and (ONNX) one graph for a single sample with the policy inside it.

A multi-exit model (`netcompress.dynamic`) runs stage by stage: stage k maps the live state to
(next state, logits of exit k). Each stage is exported as its own graph (ONNX: one `.onnx` per
stage, one output per state tensor and the logits; ExecuTorch: methods `stage{k}_b{n}` of one
`.pte`, each output flattened into one row per sample), and for a batch the exit policy
(confidence vs threshold, samples leaving the batch) runs in Python between the runtime calls,
with the same code as the eager model (`early_exit_predict`): ONNX `If` / `torch.cond` would keep
the whole batch together, and ExecuTorch plans static shapes.

A single sample (the on-device request) has no batch to split, so ONNX files also hold
`single.onnx`: every stage in one graph, each exit test an ONNX `If` (exported from `torch.cond`)
whose else-branch holds the rest of the network, with the per-exit cuts as a graph input (a new
threshold needs no new export). One runtime call per request instead of one per stage and a
Python policy step between them; `benchmarks/bench_dynamic.py` measures both.

The file is a zip (stored, not compressed) holding `policy.json` and the stage programs.
"""
from __future__ import annotations

import copy
import io
import json
import warnings
import zipfile
from typing import Any

import torch
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.core.modes import eval_mode
from netcompress.dynamic.base import MultiExitBase, confidence
from netcompress.measure.runtime import OrtModule, PteModule, first_line, onnx_program, pte_program, rename_input
from netcompress.quantize.deploy import calibration_inputs, quantize_onnx


def _as_state(state: Any) -> tuple:
    """A stage state as a tuple (a single tensor is a state of one tensor)."""
    return (state,) if isinstance(state, torch.Tensor) else tuple(state)


class _Stage(nn.Module):
    """Stage k of a multi-exit model as a plain forward: (*state) -> (*next state, logits). Stage 0
    takes the input and starts with the model's own `start` (MSDNet's first layer, for one), so
    every runtime call begins from the input as the eager model does."""

    def __init__(self, model: MultiExitBase, k: int) -> None:
        super().__init__()
        from netcompress.dynamic.early_exit import MultiExitModel, _segments

        self.model, self.k = model, k
        # the backbone's cut segments, held as submodules so a copy or an export sees them
        segs = _segments(model) if isinstance(model, MultiExitModel) else None
        self.segs = nn.ModuleList(segs) if segs is not None else None

    def forward(self, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.k == 0:
            state = _as_state(self.model.start(state[0]))
        if self.segs is not None:
            nxt, logits = self.model.segment_step(list(self.segs), self.k, tuple(state))
        else:
            nxt, logits = self.model.step(self.k, tuple(state))
        return (*_as_state(nxt), logits)


def _stage_inputs(model: MultiExitBase, x: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """The inputs of each exported stage: the input for stage 0, then the state stage k-1 leaves."""
    out, state = [(x,)], _as_state(model.start(x))
    with torch.no_grad():
        for k in range(model.num_exits):
            if not all(isinstance(t, torch.Tensor) for t in state):
                raise NetcompressError(f"early-exit stage {k}: the state passed between stages is not a tuple of tensors")
            if k == model.num_exits - 1:
                break
            nxt, _ = model.step(k, state)
            state = _as_state(nxt)
            out.append(state)
    return out


def export_early_exit(model: MultiExitBase, example: torch.Tensor, fmt: str, int8: bool = False,
                      calibration: Any = None) -> bytes:
    """A zip with policy.json and one program per stage (ONNX) or one multi-method program (.pte).

    With `int8` (ONNX only), every stage is a static int8 QDQ program calibrated on the inputs that
    stage sees when `calibration` (real training inputs) runs through the eager model; single
    samples then run stage by stage (no single-sample graph)."""
    if not isinstance(example, torch.Tensor):
        raise NetcompressError("early-exit export takes one input tensor")
    if int8 and fmt != "onnx":
        raise NetcompressError("int8 early-exit export: ONNX only (export the early-exit model to ExecuTorch in fp32)")
    if int8 and calibration is None:
        raise NetcompressError("export --int8 needs calibration data (real training inputs)")
    from netcompress.dynamic.early_exit import MultiExitModel, segment_mode

    if isinstance(model, MultiExitModel) and segment_mode(model) == "restart":
        raise NetcompressError(f"{fmt}: cannot export this early-exit model: neither torch.fx nor torch.export can cut "
                               f"its backbone at the exits {model.exit_names} into stages (it runs in restart mode); "
                               "export the backbone alone, or place the exits where the graph can be cut")
    buf = io.BytesIO()
    # eval mode for the stage inputs and the traces; the caller's per-module flags come back after
    with eval_mode(model), zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        ins = _stage_inputs(model, example[:2] if example.shape[0] >= 2 else example.expand(2, *example.shape[1:]))
        arity = [len(st) for st in ins]
        policy = {"policy": model.policy, "thresholds": model.thresholds, "num_exits": model.num_exits,
                  "state_arity": arity, "format": fmt, "shapes": stage_shapes(model, example), "flat": fmt != "onnx"}
        if fmt == "onnx":  # one output per state tensor and the logits: nothing is copied into a flat row
            calib = [_stage_inputs(model, x) for x in calibration_inputs(calibration)] if int8 else None
            for k, st in enumerate(ins):
                stage = _Stage(model, k)
                z.writestr(f"stage{k}.onnx", quantize_onnx(stage, [c[k] for c in calib], st, all_outputs=True) if int8
                           else onnx_program(stage, st, all_outputs=True))
            if int8:
                policy["single_error"] = "int8: the stages are quantized one by one; single samples run stage by stage"
            else:
                try:
                    z.writestr("single.onnx", single_program(model, example[:1]))
                except NetcompressError as e:  # the stages above are complete: single samples run through them
                    policy["single_error"] = str(e)
                    warnings.warn(f"{e}; single samples will run stage by stage", UserWarning, stacklevel=3)
        else:
            progs = {f"stage{k}": (_StageTuple(_Stage(model, k)), st) for k, st in enumerate(ins)}
            z.writestr("program.pte", pte_program(progs))
        z.writestr("policy.json", json.dumps(policy))
    return buf.getvalue()


class _Single(nn.Module):
    """The early-exit model for one sample as one graph: ``(x, cuts) -> (logits, exit index)``.

    Exit k is taken when ``confidence(logits_k)`` (the model's policy) is >= ``cuts[k]``; each test
    is a `torch.cond` whose false branch runs the remaining stages, so a sample that exits early
    computes nothing past its exit. ``cuts`` holds one score cut per early exit (`score_cut`).
    """

    def __init__(self, model: MultiExitBase) -> None:
        super().__init__()
        self.stages = nn.ModuleList(_Stage(model, k) for k in range(model.num_exits))
        self.policy = model.policy

    def forward(self, x: torch.Tensor, cuts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # exit k is returned as base + k with base computed from an input: a bare constant as a
        # branch output becomes an initializer that is also a graph output, which the ONNX
        # optimizer reports on every export
        base = cuts[:1].mul(0).long()
        return self._from(0, (x,), cuts, base)

    def _from(self, k: int, state: tuple[torch.Tensor, ...], cuts: torch.Tensor,
              base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *nxt, logits = self.stages[k](*state)
        if k == len(self.stages) - 1:
            return logits, base + k
        leave = confidence(logits, self.policy)[0] >= cuts[k]

        def stop(logits: torch.Tensor, cuts: torch.Tensor, base: torch.Tensor, *nxt: torch.Tensor):
            return logits.clone(), base + k

        def go_on(logits: torch.Tensor, cuts: torch.Tensor, base: torch.Tensor, *nxt: torch.Tensor):
            return self._from(k + 1, tuple(nxt), cuts, base)

        return torch.cond(leave, stop, go_on, (logits, cuts, base, *nxt))


def single_program(model: MultiExitBase, example: torch.Tensor) -> bytes:
    """`_Single` of `model` as an ONNX program for batch 1: inputs ``input`` [1, ...] and ``cuts``
    [num_exits - 1] (float32), outputs ``logits`` and ``exit``."""
    import onnx  # noqa: F401  (a clear ImportError before the export)

    single = _Single(copy.deepcopy(model).cpu().eval()).eval()
    args = (example[:1].detach().cpu(), torch.zeros(model.num_exits - 1))
    try:
        ep = torch.export.export(single, args)
        prog = torch.onnx.export(ep, (), dynamo=True, verbose=False, external_data=False,
                                 output_names=["logits", "exit"])
    except Exception as e:
        raise NetcompressError(f"onnx: cannot export the single-sample early-exit program of {type(model).__name__} "
                               f"({type(e).__name__}: {first_line(e)})") from None
    proto = prog.model_proto
    for old, new in zip([i.name for i in proto.graph.input], ("input", "cuts")):
        if old != new:
            rename_input(proto, old, new)
    return proto.SerializeToString()


class _StageTuple(nn.Module):
    """Flattens a stage's outputs into one tensor for ExecuTorch's single-output `PteModule.call`:
    the state tensors and the logits are flattened per sample and concatenated."""

    def __init__(self, stage: _Stage) -> None:
        super().__init__()
        self.stage = stage

    def forward(self, *state: torch.Tensor) -> torch.Tensor:
        outs = self.stage(*state)
        return torch.cat([o.reshape(o.shape[0], -1) for o in outs], dim=1)


class EarlyExitRuntime(MultiExitBase):
    """Runs an exported early-exit model: stages in the runtime, the policy in Python.

    Args:
        blob: the zip written by `export_early_exit` (its policy.json records, per stage, the
            per-sample shapes of the state tensors and logits that the flat stage output holds).
        threads: the runtime's thread count.
    """

    def __init__(self, blob: bytes, threads: int = 1) -> None:
        super().__init__()
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            info = json.loads(z.read("policy.json"))
            self.fmt = info["format"]
            if self.fmt == "onnx":
                self.stages = [OrtModule(z.read(f"stage{k}.onnx"), threads) for k in range(info["num_exits"])]
                # files written before the single-sample program, or where it could not be exported
                # (`single_error`), run every request stage by stage
                self.single = OrtModule(z.read("single.onnx"), threads) if "single.onnx" in z.namelist() else None
            else:
                self.pte = PteModule(z.read("program.pte"), threads, prefix="stage0")
                self.single = None
        self.single_policy = info["policy"]  # the policy compiled into single.onnx
        self.program, self.threads, self.shapes = blob, threads, info["shapes"]
        self.flat = info.get("flat", True)  # files written before the ONNX stages had one output per tensor
        self._n = info["num_exits"]
        self.policy, self.thresholds = info["policy"], info["thresholds"]
        self.runtime = "onnxruntime" if self.fmt == "onnx" else "executorch"
        self.eval()  # a deployed program: inference mode, the policy applies

    @property
    def num_exits(self) -> int:
        return self._n

    def start(self, x: torch.Tensor) -> Any:
        return (x,)

    def head_modules(self) -> list[nn.Module]:
        return []

    def step(self, k: int, state: Any) -> tuple[Any, torch.Tensor]:
        if not self.flat:
            outs = self.stages[k].outputs(*state)
            return tuple(outs[:-1]), outs[-1]
        flat = self.stages[k](*state) if self.fmt == "onnx" else self.pte.call(f"stage{k}", *state)
        n, outs, at = flat.shape[0], [], 0
        for shp in self.shapes[k]:
            size = int(torch.Size(shp).numel())
            outs.append(flat[:, at:at + size].reshape(n, *shp))
            at += size
        return tuple(outs[:-1]), outs[-1]

    def predict_one(self, x: torch.Tensor, cuts: list[float], policy: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One sample through `single.onnx` (one runtime call); None where the file has no such
        program or `policy` is not the one compiled into it (the stage-by-stage path runs then)."""
        if self.single is None or policy != self.single_policy:
            return None
        logits, at = self.single.outputs(x, torch.tensor(cuts, dtype=torch.float32))
        return logits, at.to(torch.long)

    def __deepcopy__(self, memo) -> "EarlyExitRuntime":
        return type(self)(self.program, self.threads)


def stage_shapes(model: MultiExitBase, example: torch.Tensor) -> list[list[tuple[int, ...]]]:
    """Per stage, the per-sample shapes of (next state..., logits) of the eager model."""
    out = []
    with eval_mode(model), torch.no_grad():
        for k, st in enumerate(_stage_inputs(model, example[:1])):
            outs = _Stage(model, k)(*st)
            out.append([tuple(o.shape[1:]) for o in outs])
    return out
