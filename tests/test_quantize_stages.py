import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.core.errors import NetcompressError
from netcompress.recipe.stages import STAGES, StageContext
from netcompress.train import TrainConfig


@pytest.fixture(scope="module")
def trained(mnist_small):
    torch.manual_seed(0)
    m = nc.models.create("lenet5", num_classes=10)
    nc.train.fit(m, mnist_small, epochs=1, max_steps=25, progress=False)
    return m


def ctx_for(tmp_path, data, name="s"):
    return StageContext(data=data, train=TrainConfig(epochs=1, lr=0.05, max_steps=5), seed=0,
                        out_dir=tmp_path / name, name=name, progress=False)


def run(kind, cfg, ctx, model):
    k = STAGES.get(kind)
    return k.run(ctx, model, k.config.from_dict(cfg, kind))


def test_kmeans_stage_then_pack_stage(tmp_path, mnist_small, trained):
    m = nc.models.create("lenet5", num_classes=10)
    m.load_state_dict(trained.state_dict())
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.weight.mul_(mod.weight.abs() > mod.weight.abs().flatten().quantile(0.9))
    ctx = ctx_for(tmp_path, mnist_small, "quantize")
    res = run("quantize", {"method": "kmeans", "bits": {"Conv2d": 8, "Linear": 5}, "epochs": 1, "max_steps": 3}, ctx, m)
    assert res.extra["layers"]["classifier.0"]["bits"] == 5
    assert torch.unique(res.model.classifier[0].weight).numel() <= 33
    assert any("histogram" in k for k in ctx.figures)
    pctx = ctx_for(tmp_path, mnist_small, "pack")
    packed = run("pack", {"coding": "huffman"}, pctx, res.model)
    assert packed.file.suffix == ".ncz" and packed.file.stat().st_size == packed.extra["file_bytes"]
    assert packed.extra["ratio_vs_dense_fp32"] > 20
    x = mnist_small.example
    assert torch.equal(res.model.eval()(x), packed.model(x))


def test_uniform_ptq_and_qat_stages(tmp_path, mnist_small, trained):
    m = nc.models.create("lenet5", num_classes=10)
    m.load_state_dict(trained.state_dict())
    res = run("quantize", {"method": "uniform", "bits": 4, "observer": "percentile"}, ctx_for(tmp_path, mnist_small), m)
    assert all(torch.unique(r).numel() <= 16 for r in res.model.classifier[0].weight.detach())
    res = run("quantize", {"method": "uniform", "bits": 4, "epochs": 1, "max_steps": 3}, ctx_for(tmp_path, mnist_small, "qat"), m)
    assert res.history and all(torch.unique(r).numel() <= 16 for r in res.model.classifier[0].weight.detach())


def test_binary_stage(tmp_path, mnist_small):
    m = nc.models.create("lenet300", num_classes=10)
    res = run("quantize", {"method": "binary", "epochs": 1, "max_steps": 5}, ctx_for(tmp_path, mnist_small), m)
    assert torch.unique(res.model.fc1.weight).numel() == 2


def test_int8_stage_runs_int8_kernels(tmp_path, mnist_small, trained):
    from netcompress.quantize import int8_layers, load_int8

    res = run("quantize", {"method": "int8", "calibration_samples": 128}, ctx_for(tmp_path, mnist_small), trained)
    q = res.measure_model
    assert int8_layers(q) >= 4 and res.file.is_file() and res.file.suffix == ".onnx"
    assert q.runtime == "onnxruntime"
    assert res.extra["int8_params"] == sum(p.numel() for p in trained.parameters())
    assert res.model is trained  # the float model goes on unchanged
    x = mnist_small.example
    with torch.no_grad():
        agree = (q(x).argmax(1) == trained.eval()(x).argmax(1)).float().mean().item()
        assert agree >= 0.75
        assert torch.allclose(load_int8(res.file)(x), q(x))
    acc_f, acc_q = nc.train.evaluate(trained, mnist_small), nc.train.evaluate(q, mnist_small)
    assert abs(acc_f - acc_q) < 0.03


def test_stage_config_errors():
    cfg = STAGES.get("quantize").config
    with pytest.raises(NetcompressError, match="bits"):
        cfg.from_dict({"method": "uniform", "bits": 12}, "quantize")
    with pytest.raises(NetcompressError, match="unknown key"):
        cfg.from_dict({"method": "kmeans", "bitz": 4}, "quantize")
    with pytest.raises(NetcompressError, match="method"):
        cfg.from_dict({"method": "ternary"}, "quantize")
    with pytest.raises(NetcompressError, match="stochastic: not used by method kmeans"):
        cfg.from_dict({"method": "kmeans", "stochastic": True}, "quantize")


def test_quantize_cli(tmp_path, capsys):
    from netcompress.cli import main

    m = nc.models.create("lenet300", num_classes=10)
    nc.models.save(m, tmp_path / "m.pt")
    assert main(["quantize", str(tmp_path / "m.pt"), "--data", "mnist-5k", "--bits", "Linear=3", "--max-steps", "2", "--out", str(tmp_path / "q.pt")]) == 0
    q = nc.models.load(tmp_path / "q.pt")
    assert torch.unique(q.fc2.weight).numel() <= 8
    assert main(["quantize", str(tmp_path / "m.pt"), "--data", "mnist-5k", "--bits", "x=y=z", "--out", str(tmp_path / "q.pt")]) == 2


def test_int8_refuses_untraceable_models():
    from netcompress.quantize import int8_quantize

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.export cannot capture it
                return self.fc(x)
            return -self.fc(x)

    with pytest.raises(NetcompressError, match="cannot export Branchy"):
        int8_quantize(Branchy(), torch.randn(4, 4))
