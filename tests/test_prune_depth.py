"""Depth pruning: whole blocks out of zoo, torchvision and Hugging Face models."""

import pytest
import torch
from torch import nn

import netcompress as nc
from netcompress.cli import main
from netcompress.core.batch import call, logits_of
from netcompress.core.errors import NetcompressError
from netcompress.models.sources import TINY_CONFIGS
from netcompress.prune.depth import find_blocks, score_blocks


class Res(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        with torch.no_grad():
            self.fc.weight.mul_(scale)
            self.fc.bias.mul_(scale)

    def forward(self, x):
        return x + self.fc(x)


class Stack(nn.Module):
    def __init__(self, scales, fixed_loop: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(Res(s) for s in scales)
        self.out = nn.Linear(8, 3)
        self.fixed_loop = fixed_loop

    def forward(self, x):
        x = self.inp(x)
        if self.fixed_loop:  # a forward that indexes its blocks by a fixed count
            for i in range(4):
                x = self.blocks[i](x)
        else:
            for b in self.blocks:
                x = b(x)
        return self.out(x)


def test_influence_removes_the_blocks_that_change_their_input_least_and_leaves_the_model():
    torch.manual_seed(0)
    m = Stack([1.0, 1e-3, 1.0, 1e-3]).eval()
    x = torch.randn(16, 4)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    small = nc.prune.depth(m, 0.5, example_inputs=x)
    assert len(small.blocks) == 2 and len(m.blocks) == 4
    # the kept blocks are the two large ones (0 and 2), in order
    assert torch.equal(small.blocks[0].fc.weight, m.blocks[0].fc.weight)
    assert torch.equal(small.blocks[1].fc.weight, m.blocks[2].fc.weight)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    # near-identity blocks: removing them barely changes the output
    assert torch.allclose(small(x), m(x), atol=1e-2)
    rnd = nc.prune.depth(m, 0.5, example_inputs=x, criterion="random", seed=3)
    again = nc.prune.depth(m, 0.5, example_inputs=x, criterion="random", seed=3)
    assert all(torch.equal(a, b) for a, b in zip(rnd.state_dict().values(), again.state_dict().values()))


def test_vit_blocks_scored_on_data_and_the_stage_and_cli_agree(tmp_path):
    data = nc.data.load("digits").subset(256, 64)
    torch.manual_seed(0)
    m = nc.models.create_for("vit-tiny", data)
    blocks = score_blocks(m, find_blocks(m, data.example), [data.example])
    assert [b.name for b in blocks] == [f"blocks.{i}" for i in range(4)]
    res = nc.recipe.apply("prune", m, data, granularity="block", ratio=0.5, epochs=0)
    assert (res.extra["kept_blocks"], res.extra["total_blocks"]) == (2, 4)
    assert res.extra["criterion"] == "influence"  # the block default
    nc.models.save(m, tmp_path / "m.pt")
    rc = main(["prune", str(tmp_path / "m.pt"), "--data", "digits", "--granularity", "block", "--ratio", "0.5",
               "--epochs", "0", "--out", str(tmp_path / "s.pt")])
    assert rc == 0
    cli = nc.models.load(tmp_path / "s.pt")
    assert len(cli.blocks) == 2
    for (k, a), b in zip(res.model.state_dict().items(), cli.state_dict().values()):
        assert torch.equal(a, b), k
    x = data.example[:4]
    assert res.model(x).shape == m(x).shape
    # a criterion of another granularity: one line, exit 2, no file
    rc = main(["prune", str(tmp_path / "m.pt"), "--data", "digits", "--granularity", "block", "--ratio", "0.5",
               "--criterion", "l1", "--out", str(tmp_path / "bad.pt")])
    assert rc == 2 and not (tmp_path / "bad.pt").exists()


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "qwen2"])
def test_hugging_face_layers_removed_with_config_and_layer_idx_following(arch, tmp_path):
    torch.manual_seed(0)
    layers = {"gpt2": "n_layer"}.get(arch, "num_hidden_layers")
    m = nc.models.create(f"hf:{arch}", **{**TINY_CONFIGS[arch], layers: 4}).eval()
    x = {"input_ids": torch.randint(0, 50, (1, 12))}
    small = nc.prune.depth(m, 0.5, example_inputs=x)
    assert small.config.num_hidden_layers == 2 and m.config.num_hidden_layers == 4
    idx = [mod.layer_idx for mod in small.modules() if isinstance(getattr(mod, "layer_idx", None), int)]
    assert sorted(set(idx)) == list(range(len(set(idx))))  # renumbered 0..n-1
    for key, val in vars(small.config).items():  # per-layer lists (qwen2's layer_types) follow
        if isinstance(val, list) and "layer" in key and len(getattr(m.config, key)) == 4:
            assert len(val) == 2, key
    out = logits_of(call(small, x))
    assert out.shape == logits_of(call(m, x)).shape and bool(torch.isfinite(out).all())
    nc.models.save(small, tmp_path / "s.pt")
    assert torch.equal(logits_of(call(nc.models.load(tmp_path / "s.pt").eval(), x)), out)


def test_resnet_blocks_that_change_shape_stay():
    m = nc.models.create("resnet20", num_classes=10, in_channels=3, input_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    blocks = find_blocks(m, x)
    # 3 blocks per stage; the first of stages 2 and 3 halves the resolution and doubles the width
    assert [b.name for b in blocks] == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1",
                                        "layer3.2"]
    for b in blocks:  # every block found keeps its input's shape (no stride, no width change)
        blk = m.get_submodule(b.name)
        seen = []
        h = blk.register_forward_hook(lambda mod, a, o: seen.append((a[0].shape, o.shape)))
        m(x)
        h.remove()
        assert seen[0][0] == seen[0][1]
    small = nc.prune.depth(m, 0.5, example_inputs=x)
    assert sum(len(getattr(small, f"layer{i}")) for i in (1, 2, 3)) == 9 - 3  # int(0.5 * 7) blocks gone
    assert small(x).shape == (2, 10)
    most = nc.prune.depth(m, 0.99, example_inputs=x)  # a stage keeps its strided first block and may lose the rest
    assert [len(getattr(most, f"layer{i}")) for i in (1, 2, 3)] == [1, 1, 1]


def test_no_block_and_broken_forward_are_one_error_and_change_nothing():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(NetcompressError, match="no removable block"):
        nc.prune.depth(mlp, 0.5, example_inputs=torch.randn(2, 16))
    m = Stack([1.0, 1.0, 1.0, 1.0], fixed_loop=True).eval()
    with pytest.raises(NetcompressError, match="no longer runs without blocks of blocks"):
        nc.prune.depth(m, 0.5, example_inputs=torch.randn(2, 4))
    assert len(m.blocks) == 4
    with pytest.raises(NetcompressError, match="ratio"):
        nc.prune.depth(Stack([1.0] * 4), 1.0, example_inputs=torch.randn(2, 4))
    with pytest.raises(NetcompressError, match="criterion"):
        nc.prune.depth(Stack([1.0] * 4), 0.5, example_inputs=torch.randn(2, 4), criterion="l1")


def test_activations_are_not_blocks():
    """LeNet-5's two ReLUs in `features` keep their input's shape and share a class; before, depth
    pruning removed one of them (a different function, no parameter less). A parameter-free child
    is not a block, so a chain of layers that change shape has none."""
    m = nc.models.create("lenet5", num_classes=10, in_channels=1, input_size=28, seed=0)
    with pytest.raises(NetcompressError, match="no removable block"):
        nc.prune.depth(m, 0.5, example_inputs=torch.randn(2, 1, 28, 28))
    convs = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
    assert [b.name for b in find_blocks(convs, torch.randn(2, 3, 8, 8))] == ["2", "4"]
