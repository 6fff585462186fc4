"""Shared helpers for benchmark scripts: machine header, result tables, seeds."""
from __future__ import annotations

import os
import platform
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch

import netcompress as nc
from netcompress.measure import latency_ms

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_header() -> str:
    """The header of a result file. The CPU kernels torch dispatches to (AVX2, AVX512, ...) are part of
    it: trained models differ across them in the last float bits, and the difference grows with training."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"- machine: {cpu_model()}, {os.cpu_count()} cores, torch CPU kernels "
            f"{torch.backends.cpu.get_cpu_capability()}, GPU: {gpu}\n"
            f"- software: Python {platform.python_version()}, torch {torch.__version__}, threads {torch.get_num_threads()}\n"
            f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}\n"
            f"- command: `{' '.join([Path(sys.argv[0]).name and 'python ' + os.path.relpath(sys.argv[0]), *sys.argv[1:]])}`\n")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def mean_std(xs: Sequence[float]) -> str:
    """'mean ± sample std' in percent for accuracies in [0, 1]."""
    if len(xs) == 1:
        return f"{100 * xs[0]:.2f}"
    return f"{100 * statistics.mean(xs):.2f} ± {100 * statistics.stdev(xs):.2f}"


def write_result(name: str, title: str, body: str) -> Path:
    """Write benchmarks/results/NAME.md: title, machine header, then the body (tables, notes)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(f"# {title}\n\n{machine_header()}\n{body}")
    print(path.read_text())
    return path


def l1_channels(model, x, ratio: float):
    """The netcompress side of the pruning comparisons: L1 channels at `ratio` (a new model)."""
    return nc.prune.channels(model, "l1", ratio, example_inputs=x)


def interleaved_latency(models: dict, x, rounds: int = 7, batch_size: int = 1, threads: int = 1) -> dict[str, list[float]]:
    """{name: [ms per round]}: `netcompress.measure.latency_ms` of each model (min_run_time 0.5 s) in
    `rounds` interleaved rounds, the order rotating each round, so load on the machine hits all alike."""
    keys = list(models)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            times[k].append(latency_ms(models[k], x, batch_size=batch_size, threads=threads, min_run_time=0.5))
    return times
