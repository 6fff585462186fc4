"""Golden tests for each channel criterion on hand-made weights."""
import copy

import torch
from torch import nn

from netcompress.core.graph import ChannelGraph
from netcompress.prune import channels
from netcompress.prune.importance import CRITERIA, ScoreContext


class Net(nn.Module):
    """conv(2 -> 4) -> bn -> relu -> conv(4 -> 3) -> mean: one prunable group of 4 channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.head(self.relu(self.bn(self.conv(x)))).mean((2, 3))


def _net(filters, gammas=(1.0, 1.0, 1.0, 1.0), betas=(0.0, 0.0, 0.0, 0.0)):
    m = Net().eval()
    with torch.no_grad():
        m.conv.weight.copy_(torch.tensor(filters, dtype=torch.float).view(4, 2, 1, 1))
        m.bn.weight.copy_(torch.tensor(gammas))
        m.bn.bias.copy_(torch.tensor(betas))
        m.head.weight.fill_(1.0)
    return m


def _scores(m, criterion, batches=None):
    g = ChannelGraph.build(m, torch.randn(1, 2, 4, 4))
    assert len(g.groups) == 1 and len(g.groups[0].classes) == 4
    return CRITERIA.get(criterion)(ScoreContext(m, g, batches))[0]


def test_l1_and_l2_golden():
    m = _net([[3, 4], [1, 0], [-6, 0], [0.5, 0.5]])
    torch.testing.assert_close(_scores(m, "l1"), torch.tensor([7.0, 1.0, 6.0, 1.0]))
    torch.testing.assert_close(_scores(m, "l2"), torch.tensor([5.0, 1.0, 6.0, 0.5 ** 0.5]))


def test_l1_and_l2_disagree_and_channels_removes_the_lowest():
    m = _net([[3, 4], [1, 0], [-6, 0], [0.5, 0.5]])
    # l1 lowest ties at 1.0 (channels 1, 3): stable order removes 1 first; l2 lowest is channel 3
    small = channels(m, "l2", 0.25, example_inputs=torch.randn(1, 2, 4, 4))
    torch.testing.assert_close(small.conv.weight.flatten(1), torch.tensor([[3.0, 4.0], [1.0, 0.0], [-6.0, 0.0]]))


def test_fpgm_picks_the_geometric_median_filter():
    # filters A=(0,0), B=(2,0), C=(0,2), D=(0.6,0.6): D sits near the geometric median.
    # summed distances: A 2+2+0.8485, B 2+2.8284+1.5232, C the same, D 0.8485+2*1.5232
    m = _net([[0, 0], [2, 0], [0, 2], [0.6, 0.6]])
    s = _scores(m, "fpgm")
    torch.testing.assert_close(s, torch.tensor([4.8485, 6.3516, 6.3516, 3.8949]), atol=1e-3, rtol=0)
    assert int(s.argmin()) == 3  # the median filter is redundant ...
    assert int(_scores(m, "l1").argmin()) == 0  # ... while L1 would drop the zero filter A
    small = channels(m, "fpgm", 0.25, example_inputs=torch.randn(1, 2, 4, 4))
    torch.testing.assert_close(small.conv.weight.flatten(1), torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]]))


def test_slimming_uses_bn_gamma():
    m = _net([[1, 1]] * 4, gammas=(0.5, -2.0, 0.01, 1.0))
    torch.testing.assert_close(_scores(m, "slimming"), torch.tensor([0.5, 2.0, 0.01, 1.0]))


def test_apoz_counts_positive_activations():
    # BN: gamma 1, beta: channel 0 always positive, 1 never, 2 and 3 depend on the input sign
    m = _net([[0, 0], [0, 0], [1, 0], [0, 1]], betas=(1.0, -1.0, 0.0, 0.0))
    with torch.no_grad():
        m.bn.running_var.fill_(1.0 - m.bn.eps)
    x = torch.zeros(2, 2, 2, 2)
    x[:, 0, 0, :] = 1.0   # input channel 0 positive at half the positions, zero elsewhere
    x[:, 1] = -1.0        # input channel 1 always negative
    s = _scores(m, "apoz", [(x, torch.zeros(2, dtype=torch.long))])
    torch.testing.assert_close(s, torch.tensor([1.0, 0.0, 0.5, 0.0]))


def _gate_grad(m, x, y):
    """dL/ds for a gate s = 1 on each channel where the head reads it: the first-order change of the
    loss when that channel is removed."""
    m = copy.deepcopy(m)
    s = torch.ones(1, 4, 1, 1, requires_grad=True)
    h = m.head.register_forward_pre_hook(lambda _m, a: (a[0] * s,))
    nn.functional.cross_entropy(m(x), y).backward()
    h.remove()
    return s.grad.flatten(), m


def test_taylor_is_the_squared_first_order_change_of_removing_each_channel():
    m = _net([[1, 2], [0, 0], [3, 1], [-1, 1]], gammas=(1.0, 0.5, 2.0, 1.5), betas=(0.1, 0.0, -0.2, 0.3))
    torch.manual_seed(0)
    with torch.no_grad():  # a head that weighs the channels differently per class (all ones: no gradient reaches them)
        m.head.weight.copy_(torch.randn(3, 4, 1, 1))
    batches = [(torch.randn(4, 2, 3, 3), torch.tensor([0, 1, 2, 0])), (torch.randn(3, 2, 3, 3), torch.tensor([2, 2, 1]))]
    s = _scores(m, "taylor", batches)
    gates = [_gate_grad(m, x, y) for x, y in batches]
    torch.testing.assert_close(s, torch.stack([g.pow(2) for g, _ in gates]).mean(0))
    # behind a ReLU, the same as Molchanov et al. 2019's BatchNorm form (gamma dL/dgamma + beta dL/dbeta)^2
    bn_form = [(c.bn.weight * c.bn.weight.grad + c.bn.bias * c.bn.bias.grad).detach() for _, c in gates]
    torch.testing.assert_close(s, torch.stack(bn_form).pow(2).mean(0))
    assert s[1] == 0  # a zero filter with beta 0: nothing to remove
    assert bool((s[[0, 2, 3]] > 1e-6).all()) and len(set(s.tolist())) == 4


def test_random_is_seeded_and_registry_lists_all():
    m = _net([[1, 1]] * 4)
    g = ChannelGraph.build(m, torch.randn(1, 2, 4, 4))
    a = CRITERIA.get("random")(ScoreContext(m, g, seed=3))[0]
    b = CRITERIA.get("random")(ScoreContext(m, g, seed=3))[0]
    assert torch.equal(a, b)
    assert set(CRITERIA.list()) == {"l1", "l2", "fpgm", "slimming", "apoz", "taylor", "output_norm", "random"}


def test_residual_channel_scores_sum_both_producers():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 2, 1, bias=False)
            self.b = nn.Conv2d(1, 2, 1, bias=False)
            self.head = nn.Conv2d(2, 1, 1)

        def forward(self, x):
            return self.head(self.a(x) + self.b(x))

    m = Res()
    with torch.no_grad():
        m.a.weight.copy_(torch.tensor([1.0, 5.0]).view(2, 1, 1, 1))
        m.b.weight.copy_(torch.tensor([-3.0, 0.5]).view(2, 1, 1, 1))
    torch.testing.assert_close(_scores_generic(m), torch.tensor([4.0, 5.5]))


def _scores_generic(m):
    g = ChannelGraph.build(m, torch.randn(1, 1, 2, 2))
    assert len(g.groups) == 1
    return CRITERIA.get("l1")(ScoreContext(m, g))[0]
