"""Render a run's entries as Markdown and as one self-contained HTML file (no network access).

Plots are drawn with matplotlib (Agg) and embedded as base64 PNG; styles are inline.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

COLUMNS = ["row", "accuracy %", "params", "nonzero", "MACs", "bytes", "ratio", "b1 ms", "b64 ms", "speedup b1", "speedup b64"]


def _fmt_int(v: Any) -> str:
    return f"{int(v):,}" if v is not None else "-"


def summary_rows(entries: list[dict[str, Any]], all_stages: bool = False) -> list[dict[str, Any]]:
    """One row per variant (its last stage) or per stage: the figures and ratios vs the baseline."""
    if not entries:
        return []
    base = entries[0]
    if all_stages:
        chosen = entries
    else:
        last: dict[str, dict] = {}
        for e in entries:
            last[e["variant"] if e["stage"] != "baseline" else "baseline"] = e
        chosen = list(last.values())
    rows = []
    for e in chosen:
        label = e["stage"] if all_stages or e["stage"] == "baseline" else (e["variant"] if e["variant"] != "main" else f"main ({e['stage']})")
        ratio = base["bytes"] / e["bytes"] if e.get("bytes") and base.get("bytes") else None
        sp1 = base["latency_ms_b1"] / e["latency_ms_b1"] if e.get("latency_ms_b1") and base.get("latency_ms_b1") else None
        sp64 = base["latency_ms_b64"] / e["latency_ms_b64"] if e.get("latency_ms_b64") and base.get("latency_ms_b64") else None
        rows.append({"row": label, "stage": e["stage"], "kind": e.get("kind"), "accuracy": e.get("accuracy"),
                     "params": e.get("params"), "nonzero": e.get("nonzero_params"), "macs": e.get("macs"),
                     "bytes": e.get("bytes"), "ratio": ratio, "b1": e.get("latency_ms_b1"), "b64": e.get("latency_ms_b64"),
                     "speedup_b1": sp1, "speedup_b64": sp64,
                     "perplexity": e.get("extra", {}).get("perplexity"), "bpb": e.get("extra", {}).get("bits_per_byte")})
    return rows


LM_COLUMNS = ["perplexity", "bits/byte"]


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """The table's columns; language-model runs add perplexity and bits per byte."""
    return COLUMNS + (LM_COLUMNS if any(r.get("perplexity") is not None for r in rows) else [])


def _row_cells(r: dict[str, Any], columns: list[str]) -> list[str]:
    cells = _cells(r)
    if columns[-len(LM_COLUMNS):] == LM_COLUMNS:
        cells += ["-" if r.get(k) is None else f"{r[k]:.3f}" for k in ("perplexity", "bpb")]
    return cells


def _cells(r: dict[str, Any]) -> list[str]:
    f = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    return [r["row"], "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}", _fmt_int(r["params"]),
            _fmt_int(r["nonzero"]), _fmt_int(r["macs"]), _fmt_int(r["bytes"]),
            "-" if r["ratio"] is None else f"{r['ratio']:.1f}x", f(r["b1"], 3), f(r["b64"], 2),
            "-" if r["speedup_b1"] is None else f"{r['speedup_b1']:.2f}x",
            "-" if r["speedup_b64"] is None else f"{r['speedup_b64']:.2f}x"]


DEPLOY_COLUMNS = ["row", "runtime", "file bytes", "check: max abs diff / top-1", "runtime b1 ms", "eager b1 ms",
                  "runtime b64 ms", "eager b64 ms", "speedup b1 / b64 (vs eager, same model)"]


def deploy_rows(entries: list[dict[str, Any]]) -> list[list[str]]:
    """One row per export stage: the file in its runtime beside PyTorch eager of the same model."""
    out = []
    for e in entries:
        info = (e.get("extra") or {}).get("export")
        if not isinstance(info, dict):
            continue
        lat, c = info.get("latency") or {}, info.get("check") or {}
        f = lambda k: "-" if lat.get(k) is None else f"{lat[k]:.3f}"  # noqa: E731
        sp = lambda b: (f"{lat[f'eager_ms_b{b}'] / lat[f'runtime_ms_b{b}']:.2f}x"  # noqa: E731
                        if lat.get(f"runtime_ms_b{b}") and lat.get(f"eager_ms_b{b}") else "-")
        label = e["stage"] if e.get("variant") in (None, "main") else e["variant"]
        out.append([label, f"{info.get('runtime')}{' int8' if info.get('int8') else ''}", _fmt_int(info.get("bytes")),
                    f"{c.get('max_abs_diff', float('nan')):.3g} / {100 * c.get('top1_agreement', float('nan')):.1f} %",
                    f("runtime_ms_b1"), f("eager_ms_b1"), f("runtime_ms_b64"), f("eager_ms_b64"), f"{sp(1)} / {sp(64)}"])
    return out


def markdown_table(rows: list[dict[str, Any]]) -> str:
    cols = _columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_row_cells(r, cols)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _plots(entries: list[dict[str, Any]]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    curves = [(e["stage"], e["history"]) for e in entries if e.get("history")]
    if curves:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
        for name, h in curves:
            ep = [x["epoch"] for x in h]
            a1.plot(ep, [x.get("loss", float("nan")) for x in h], marker=".", label=name)
            if any("test_acc" in x for x in h):
                a2.plot(ep, [100 * x.get("test_acc", float("nan")) for x in h], marker=".", label=name)
        a1.set(xlabel="epoch", ylabel="training loss", title="Training loss", yscale="log")
        a2.set(xlabel="epoch", ylabel="test accuracy %", title="Test accuracy")
        a2.legend(fontsize=7, loc="lower right")
        out["Training curves"] = _png(fig)
    rows = summary_rows(entries)
    pts = [r for r in rows if r["accuracy"] is not None]
    for key, label, title in (("bytes", "bytes on disk (log)", "Accuracy vs size"),
                              ("b1", "latency batch 1, ms (log)", "Accuracy vs latency")):
        pp = [r for r in pts if r.get(key)]
        if len(pp) < 1:
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        xs, ys = [r[key] for r in pp], [100 * r["accuracy"] for r in pp]
        ax.scatter(xs, ys, c=["#d62728" if r["row"] == "baseline" else "#1f77b4" for r in pp], zorder=3)
        for r, x, y in zip(pp, xs, ys):
            ax.annotate(r["row"], (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        order = sorted(zip(xs, ys))  # Pareto front: no other point is both smaller/faster and more accurate
        front, best = [], -1.0
        for x, y in order:
            if y > best:
                front.append((x, y))
                best = y
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="#2ca02c", alpha=0.6, label="Pareto front")
        ax.set(xscale="log", xlabel=label, ylabel="test accuracy %", title=title)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        out[title] = _png(fig)
    return out


def _img(title: str, png: bytes) -> str:
    b64 = base64.b64encode(png).decode()
    return f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{b64}"><figcaption>{html.escape(title)}</figcaption></figure>'


def _html_table(rows: list[dict[str, Any]]) -> str:
    cols = _columns(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _row_cells(r, cols)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _deploy_html(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in DEPLOY_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return (f'<h2 id="deployment">Deployment (measured in the runtime that ships it)</h2>'
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1150px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1rem 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:0.5rem;vertical-align:top}
img{max-width:540px;border:1px solid #eee}pre{background:#f7f7f7;padding:1rem;overflow:auto;font-size:12px}
.meta{color:#666;font-size:13px}"""


def write_report(out_dir: Path, recipe, entries: list[dict[str, Any]], figures: dict[str, bytes], seconds: float) -> None:
    """Write report.md and report.html into `out_dir` (atomically)."""
    from netcompress.models.io import atomic_write

    rows, all_rows = summary_rows(entries), summary_rows(entries, all_stages=True)
    name = recipe.name
    md = [f"# netcompress run: {name}\n", f"Data `{recipe.data}`, model `{recipe.model.name}`, seed {recipe.seed}; "
          f"wall time {seconds:.0f} s. Latency: CPU, {recipe.measure.threads} thread(s), median. "
          "Ratio = baseline bytes / bytes; speedup = baseline latency / latency.\n",
          "## Summary (one row per variant)\n", markdown_table(rows)]
    if len(all_rows) > len(rows):
        md += ["## Every stage\n", markdown_table(all_rows)]
    deploy = deploy_rows(entries)
    if deploy:
        md += ["## Deployment (measured in the runtime that ships it)\n",
               "| " + " | ".join(DEPLOY_COLUMNS) + " |\n|" + "---|" * len(DEPLOY_COLUMNS) + "\n"
               + "".join("| " + " | ".join(r) + " |\n" for r in deploy)]
    atomic_write(out_dir / "report.md", lambda f: f.write("\n".join(md)), mode="w")

    plots = _plots(entries)
    figs = "".join(_img(t, p) for t, p in {**plots, **figures}.items())
    doc = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>netcompress: {html.escape(name)}</title>
<style>{_CSS}</style></head><body>
<h1>netcompress run: {html.escape(name)}</h1>
<p class="meta">Data <b>{html.escape(recipe.data)}</b>, model <b>{html.escape(recipe.model.name)}</b>, seed {recipe.seed}.
Wall time <b id="wall-time">{seconds:.0f} s</b>. Latency: CPU, {recipe.measure.threads} thread(s), median of torch.utils.benchmark.
Ratio = baseline bytes / bytes on disk; speedup = baseline latency / latency.</p>
<h2>Summary (one row per variant)</h2>{_html_table(rows)}
{"<h2>Every stage</h2>" + _html_table(all_rows) if len(all_rows) > len(rows) else ""}
{_deploy_html(deploy)}
<h2>Charts</h2>{figs}
<h2>Recipe</h2><pre>{html.escape(recipe.to_yaml())}</pre>
</body></html>"""
    atomic_write(out_dir / "report.html", lambda f: f.write(doc), mode="w")
