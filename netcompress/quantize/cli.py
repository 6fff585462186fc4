"""CLI command `netcompress quantize`: k-means sharing, uniform PTQ, or int8 deployment of a saved model."""
from __future__ import annotations

import json


def _bits(text: str):
    """'5' -> 5; 'Conv2d=8,Linear=5' -> {'Conv2d': 8, 'Linear': 5}."""
    from netcompress.core.errors import NetcompressError

    try:
        if "=" not in text:
            return int(text)
        return {k.strip(): int(v) for k, v in (part.split("=", 1) for part in text.split(","))}
    except ValueError:
        raise NetcompressError(f"--bits {text!r}: expected an integer or TYPE=BITS,TYPE=BITS") from None


def cmd_quantize(args) -> int:
    from netcompress.cli import load_data, load_model, save_output
    from netcompress.core.errors import NetcompressError

    bits = _bits(args.bits)
    data = load_data(args) if args.data else None
    model = load_model(args, data)
    if args.method == "kmeans":
        from netcompress.quantize.cluster import cluster_

        info = cluster_(model, bits=bits, init=args.init)
        print(json.dumps({n: {k: v for k, v in d.items() if k != "centroids"} for n, d in info.items()}, indent=1))
    elif args.method == "uniform":
        from netcompress.quantize.uniform import quantize_

        if not isinstance(bits, int):
            raise NetcompressError("--bits: uniform quantization takes one integer")
        quantize_(model, bits, calibration=args.calibration)
    else:
        from netcompress.quantize.deploy import int8_layers, int8_quantize, save_int8

        if data is None:
            raise NetcompressError("quantize --method int8 needs --data for activation calibration")
        from netcompress.quantize.deploy import SUFFIX

        runtime = "executorch" if str(args.out).endswith(".pte") else "onnxruntime"
        if not str(args.out).endswith(SUFFIX[runtime]):
            raise NetcompressError(f"--out {args.out}: an int8 program is a .onnx (ONNX Runtime) or .pte (ExecuTorch) file")
        q = int8_quantize(model, data.calibration(256), runtime=runtime, example=data.example)
        save_int8(q, args.out)
        print(f"{int8_layers(q)} int8 layers; saved {args.out} ({runtime})")
        return 0
    save_output(model, args.out)
    print(f"saved {args.out}")
    return 0


def add_commands(sub) -> None:
    from netcompress.cli import add_data_args, add_model_args

    p = sub.add_parser("quantize", help="k-means weight sharing, uniform n-bit PTQ, or int8 deployment of a model")
    add_model_args(p)
    add_data_args(p, required=False)
    p.set_defaults(data=None)
    p.add_argument("--method", default="kmeans", choices=["kmeans", "uniform", "int8"])
    p.add_argument("--bits", default="5", help="bits, or per layer type: Conv2d=8,Linear=5")
    p.add_argument("--init", default="linear", choices=["linear", "density", "random", "best"])
    p.add_argument("--calibration", default="mse", choices=["minmax", "mse", "percentile"])
    p.add_argument("--out", required=True, help="output model file (.pt; int8: .onnx for ONNX Runtime or .pte for ExecuTorch)")
    p.set_defaults(func=cmd_quantize)
