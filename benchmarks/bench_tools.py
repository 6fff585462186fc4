"""B10: tool speed. 1-D k-means on 1M weights vs scikit-learn KMeans; Huffman encode/decode of 1M
symbols vs dahuffman. Same data, same process, one after the other.

    python benchmarks/bench_tools.py            # k = 32 (5 bits)
    python benchmarks/bench_tools.py --full     # also k = 256 (8 bits)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, write_result  # noqa: E402

from netcompress.quantize import huffman as hf  # noqa: E402
from netcompress.quantize.cluster import kmeans_1d  # noqa: E402


def best_of(f, n=3):
    ts, out = [], None
    for _ in range(n):
        t = time.perf_counter()
        out = f()
        ts.append(time.perf_counter() - t)
    return min(ts), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    # weights shaped like a trained layer: heavy-tailed around zero
    w = (rng.standard_t(5, 1_000_000) * 0.03).astype(np.float64)
    rows = []
    from sklearn.cluster import KMeans

    for k in ([32, 256] if args.full else [32]):
        for init in ("linear", "best"):
            t, r = best_of(lambda: kmeans_1d(w, k, init=init), 1 if init == "best" else 2)
            rows.append([f"netcompress kmeans_1d init={init}", k, f"{t:.3f}", f"{r.inertia:.6f}"])
        t0 = time.perf_counter()
        km = KMeans(k, n_init="auto", random_state=0).fit(w.reshape(-1, 1))
        tsk = time.perf_counter() - t0
        rows.append(["scikit-learn KMeans (k-means++, n_init=auto)", k, f"{tsk:.3f}", f"{km.inertia_:.6f}"])
    body = "## k-means on 1,000,000 weights\n\n" + md_table(["method", "k", "seconds", "objective (SSE)"], rows)
    sk_rows = [r for r in rows if r[0].startswith("scikit")]
    notes = []
    for skr in sk_rows:
        for r in rows:
            if r[1] == skr[1] and r[0].startswith("netcompress"):
                notes.append(f"- k={r[1]} {r[0]}: {float(skr[2]) / float(r[2]):.1f}x faster than scikit-learn, "
                             f"objective {float(r[3]) / float(skr[3]):.4f}x of scikit-learn's (<= 1 is better or equal)")
    body += "\n" + "\n".join(notes) + "\n"

    # Huffman: the 5-bit cluster indices of those weights (what Deep Compression codes)
    r = kmeans_1d(w, 32)
    sym = r.labels.astype(np.int64)
    t_enc, code = best_of(lambda: hf.encode(sym))
    blob = code.to_bytes()
    t_dec, back = best_of(lambda: hf.decode(hf.HuffmanCode.from_bytes(blob)))
    assert np.array_equal(back, sym)
    import dahuffman

    syms = sym.tolist()
    t_dbuild, codec = best_of(lambda: dahuffman.HuffmanCodec.from_data(syms), 1)
    t_denc, enc = best_of(lambda: codec.encode(syms), 2)
    t_ddec, dec = best_of(lambda: codec.decode(enc), 1)
    assert dec == syms
    ent = hf.entropy_bits(sym)
    hrows = [["netcompress (numpy, canonical, chunked)", f"{t_enc * 1000:.1f}", f"{t_dec * 1000:.1f}", f"{len(blob) * 8 / len(sym):.4f}"],
             ["dahuffman 0.4 (pure Python)", f"{(t_dbuild + t_denc) * 1000:.1f}", f"{t_ddec * 1000:.1f}", f"{len(enc) * 8 / len(sym):.4f}"]]
    body += ("\n## Huffman coding of 1,000,000 cluster indices (32 symbols)\n\n"
             + md_table(["coder", "encode ms (incl. building the code)", "decode ms", "bits/symbol (incl. tables)"], hrows)
             + f"\nEntropy bound: {ent:.4f} bits/symbol. Encode {(t_dbuild + t_denc) / t_enc:.1f}x faster, "
               f"decode {t_ddec / t_dec:.1f}x faster than dahuffman; both decode exactly.\n")
    write_result("B10_tools", "B10: k-means and Huffman speed vs scikit-learn and dahuffman", body)


if __name__ == "__main__":
    main()
