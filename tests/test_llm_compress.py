"""One-shot LLM compressors: Wanda's score, SparseGPT's and GPTQ's updates against closed forms."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from netcompress.core.errors import NetcompressError
from netcompress.prune.llm import mask_from_scores, parse_pattern, prune_, sparsegpt_prune, wanda_score
from netcompress.quantize.weight_only import (awq, clip_search, group_params, gptq, hqq, hqq_group, packed_bytes,
                                              quantize_to, quantize_weights_, rtn, shrink_lp)


def _hessian(x: torch.Tensor) -> torch.Tensor:
    return 2 * x.t() @ x / x.shape[0]


def _damped(h: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    return h + torch.eye(len(h), dtype=h.dtype) * damp * torch.diag(h).mean()


def _sequential_reference(w0: torch.Tensor, h: torch.Tensor, fix) -> torch.Tensor:
    """Greedy column-by-column elimination with an explicit least-squares solve per step: column i
    takes the value `fix(i, current column)`, then every later column of the row is re-solved to
    minimise (W0 - W') H (W0 - W')^T with columns 0..i held fixed."""
    w = w0.clone()
    cols = w.shape[1]
    for i in range(cols):
        w[:, i] = fix(i, w)
        f, r = slice(0, i + 1), slice(i + 1, cols)
        if i + 1 < cols:
            # W'_R = W0_R + (W0_F - W'_F) H_FR H_RR^-1
            w[:, r] = w0[:, r] + (w0[:, f] - w[:, f]) @ h[f, r] @ torch.linalg.inv(h[r, r])
    return w


def test_wanda_score_hand_example():
    # |W| * ||X_j||_2: feature norms 1, 4, 0.5, 3 (inputs chosen so)
    w = torch.tensor([[1.0, -2.0, 4.0, 0.5], [-3.0, 0.25, 2.0, 1.0]])
    x = torch.tensor([[1.0, 4.0, 0.5, 0.0], [0.0, 0.0, 0.0, 3.0]])
    sq = (x * x).sum(0)
    s = wanda_score(w, sq)
    assert torch.allclose(s, torch.tensor([[1.0, 8.0, 2.0, 1.5], [3.0, 1.0, 1.0, 3.0]], dtype=s.dtype))
    keep = mask_from_scores(s, 0.5, per_row=True)
    # row 0 drops features 0 and 3 (scores 1, 1.5) although |w_3| = 0.5 is its smallest weight... and
    # magnitude would keep w_0 = 1 over w_3 = 0.5 but drop the big-activation column differently
    assert keep.tolist() == [[False, True, True, False], [True, False, False, True]]
    mag = mask_from_scores(w.abs(), 0.5, per_row=True)
    assert mag.tolist() == [[False, True, True, False], [True, False, True, False]]
    nm = mask_from_scores(s, 0.0, nm=(2, 4))
    assert nm.tolist() == keep.tolist()


def test_pattern_parse():
    assert parse_pattern("2:4") == (2, 4) and parse_pattern(None) is None
    for bad in ("4:2", "2-4", "0:4"):
        with pytest.raises(NetcompressError):
            parse_pattern(bad)


def _layer(seed: int = 0, rows: int = 3, cols: int = 8, n: int = 64):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g, dtype=torch.float64)
    x = torch.randn(n, cols, generator=g, dtype=torch.float64) @ mix  # correlated inputs
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    return w, x


def test_sparsegpt_prefix_mask_is_the_least_squares_optimum():
    w, x = _layer()
    h = _hessian(x)
    keep = torch.ones_like(w, dtype=torch.bool)
    keep[:, :3] = False  # prune the first three columns of every row
    new, k = sparsegpt_prune(w, h, mask=keep, blocksize=4, damp=0.0)
    # closed form: the kept weights minimise ||W X^T - W'_K X_K^T||^2
    sol = torch.linalg.lstsq(x[:, 3:], x @ w.t()).solution.t()
    assert torch.equal(k, keep)
    assert torch.allclose(new[:, :3], torch.zeros(3, 3, dtype=new.dtype))
    assert torch.allclose(new[:, 3:], sol, atol=1e-8)


def test_sparsegpt_matches_explicit_sequential_solves_and_blocksize_is_lazy_only():
    w, x = _layer(1)
    h = _hessian(x)
    new, keep = sparsegpt_prune(w, h, 0.5, nm=(2, 4), blocksize=128)
    ref = _sequential_reference(w, _damped(h), lambda i, cur: cur[:, i] * keep[:, i])
    assert torch.allclose(new, ref, atol=1e-8)
    assert (keep.view(3, 2, 4).sum(-1) == 2).all()
    small, keep2 = sparsegpt_prune(w, h, 0.5, nm=(2, 4), blocksize=4)
    assert torch.equal(keep, keep2) and torch.allclose(new, small, atol=1e-10)
    # on a bigger layer the OBS update lowers the output error well below masking with the same mask
    w, x = _layer(3, rows=16, cols=32, n=256)
    h = _hessian(x)
    new, keep = sparsegpt_prune(w, h, 0.5)
    err = lambda v: torch.trace((w - v) @ h @ (w - v).t())  # noqa: E731
    assert err(new) < 0.8 * err(w * keep)


@pytest.mark.parametrize("mask_block", [1, 2, 3, 8])
def test_sparsegpt_adaptive_mask_matches_explicit_solves(mask_block):
    """Each mask block is chosen from the weights as the OBS updates left them, by
    w_j^2 / [(H_{j:,j:})^-1]_00 (= w_j^2 / U_jj^2 for U the upper Cholesky factor of H^-1), over all
    rows of the block, pruning the block's share of the layer so the layer's total is exact."""
    w, x = _layer(2, rows=5, cols=8, n=128)
    h = _hessian(x)
    hd = _damped(h)
    new, keep = sparsegpt_prune(w, h, 0.5, mask_block=mask_block, blocksize=2)
    ref_keep = torch.ones_like(w, dtype=torch.bool)
    done = [0]

    def fix(i, cur):
        if i % mask_block == 0:
            cols = range(i, min(i + mask_block, w.shape[1]))
            d = torch.tensor([torch.linalg.inv(hd[j:, j:])[0, 0] for j in cols], dtype=w.dtype)
            score = cur[:, list(cols)] ** 2 / d
            k = round((cols[-1] + 1) * w.shape[0] * 0.5) - done[0]
            flat = torch.ones(score.numel(), dtype=torch.bool)
            flat[torch.argsort(score.flatten(), stable=True)[:k]] = False
            ref_keep[:, list(cols)] = flat.view_as(score)
            done[0] += k
        return cur[:, i] * ref_keep[:, i]

    ref = _sequential_reference(w, hd, fix)
    assert torch.equal(keep, ref_keep)
    assert int((~keep).sum()) == 20  # exactly half of 5 x 8, though 5 rows x 1 column cannot halve
    assert torch.allclose(new, ref, atol=1e-8)


def test_sparsegpt_default_mask_block_keeps_the_papers_share_of_a_row():
    from netcompress.prune.llm import mask_block_for

    assert [mask_block_for(n) for n in (8, 64, 128, 344, 4096, 12288)] == [1, 2, 4, 10, 128, 128]
    w, x = _layer(4, rows=8, cols=64, n=256)
    h = _hessian(x)
    a, ka = sparsegpt_prune(w, h, 0.5)  # default: mask blocks of 2 columns
    b, kb = sparsegpt_prune(w, h, 0.5, mask_block=2, blocksize=5)  # lazy blocks rounded up to whole mask blocks
    assert torch.equal(ka, kb) and torch.allclose(a, b, atol=1e-10)
    once, _ = sparsegpt_prune(w, h, 0.5, mask_block=64)  # one mask for the whole row, as before
    err = lambda v: torch.trace((w - v) @ h @ (w - v).t())  # noqa: E731
    assert err(a) < err(once)
    with pytest.raises(NetcompressError, match="mask_block"):
        sparsegpt_prune(w, h, 0.5, mask_block=0)
    # N:M groups never straddle a lazy block, whatever the layer width and blocksize
    w, x = _layer(5, rows=4, cols=344, n=512)
    for bs in (128, 5):
        new, keep = sparsegpt_prune(w, _hessian(x), 0.5, nm=(2, 4), blocksize=bs)
        assert (keep.view(4, 86, 4).sum(-1) == 2).all()


def test_gptq_matches_explicit_sequential_solves():
    w, x = _layer(2, rows=4, cols=8)
    h = _hessian(x)
    out = gptq(w, h, bits=3, group_size=4, blocksize=4)
    hd = _damped(h)
    params = {}

    def fix(i, cur):
        if i % 4 == 0:
            params["p"] = group_params(cur[:, i:i + 4], 3)
        return quantize_to(cur[:, i], *params["p"], 3)

    ref = _sequential_reference(w, hd, fix)
    assert torch.allclose(out, ref, atol=1e-8)
    assert torch.allclose(gptq(w, h, bits=3, group_size=4, blocksize=8), out, atol=1e-10)
    # every group holds at most 2^3 levels, each exactly float32(integer * float32 scale)
    for a in (0, 4):
        assert all(len(torch.unique(out[r, a:a + 4])) <= 8 for r in range(4))


def test_gptq_beats_rtn_and_rtn_is_nearest_grid_point():
    w, x = _layer(3, rows=16, cols=32, n=256)
    h = _hessian(x)
    err = lambda v: torch.trace((w - v) @ h @ (w - v).t()).item()  # noqa: E731
    r, g = rtn(w, 4, 16), gptq(w, h, 4, 16)
    assert err(g) < 0.7 * err(r)
    # brute force: RTN picks, per weight, the nearest of its group's 16 levels
    s, z = group_params(w[:, :16], 4)
    levels = s.unsqueeze(1) * (torch.arange(16, dtype=w.dtype).unsqueeze(0) - z.unsqueeze(1))
    nearest = levels.gather(1, (w[:, :16].unsqueeze(2) - levels.unsqueeze(1)).abs().argmin(2))
    assert torch.allclose(r[:, :16], nearest)


def test_gptq_brute_force_tiny_row():
    # one row, 3 weights, 1-bit... 2 bits: the exhaustive optimum over the grid is no worse than GPTQ,
    # and GPTQ is at least as good as RTN
    w, x = _layer(4, rows=1, cols=3, n=32)
    h = _hessian(x)
    s, z = group_params(w, 2)
    levels = ((torch.arange(4, dtype=w.dtype) - z).float() * s.float()).double().tolist()  # the float32 grid
    err = lambda v: torch.trace((w - v) @ _damped(h) @ (w - v).t()).item()  # noqa: E731
    best = min(err(torch.tensor([c], dtype=w.dtype)) for c in itertools.product(levels, repeat=3))
    g = gptq(w, h, 2, 3)
    assert best <= err(g) + 1e-12 <= err(rtn(w, 2, 3)) + 1e-12


def _awq_reference(w: torch.Tensor, x: torch.Tensor, bits: int, group: int, alpha: float) -> torch.Tensor:
    """AWQ's effective weight at one alpha, written from the paper: s = mean|x|^alpha (floored at
    1e-4, normalised by sqrt(max * min)), Q(W diag(s)) diag(s)^-1."""
    s = x.abs().mean(0).pow(alpha).clamp_min(1e-4)
    s = s / (s.max() * s.min()).sqrt()
    return rtn(w * s, bits, group) / s


def test_awq_picks_the_grid_alpha_with_the_smallest_output_error_on_the_tokens():
    """Brute force on the calibration tokens themselves: for every alpha of the grid, the mean
    output error ||(W - W_alpha) x||^2; AWQ returns the argmin's weight, alpha 0 is RTN."""
    w, x = _layer(5, rows=12, cols=16, n=200)
    x = x * torch.linspace(0.2, 6.0, 16, dtype=x.dtype)  # unequal input features, as in LLMs
    got, alpha = awq(w, _hessian(x), x.abs().mean(0), 3, 8, clip=False)
    errs = {i / 20: ((w - _awq_reference(w, x, 3, 8, i / 20)) @ x.t()).pow(2).sum(0).mean().item()
            for i in range(20)}
    best = min(errs, key=errs.get)
    assert alpha == best and torch.allclose(got, _awq_reference(w, x, 3, 8, best))
    assert torch.equal(_awq_reference(w, x, 3, 8, 0.0), rtn(w, 3, 8))
    assert errs[best] < errs[0.0]
    # with the clipping step: the same alpha, and the clip search run on the scaled layer
    clipped, alpha2 = awq(w, _hessian(x), x.abs().mean(0), 3, 8)
    s = x.abs().mean(0).pow(best).clamp_min(1e-4)
    s = s / (s.max() * s.min()).sqrt()
    assert alpha2 == best and torch.allclose(clipped, clip_search(w * s, _hessian(x / s), 3, 8) / s)


def test_clip_search_is_the_per_group_argmin_and_helps_a_group_with_an_outlier():
    """Brute force per row and group over the paper's ratios (1, 0.95, ... 0.55): the kept weights
    are those of the ratio with the smallest error of that group alone; ratio 1 is RTN. One outlier
    weight per row, on an input that is nearly silent, stretches min-max RTN's grid; clipping it
    costs little and gives the other weights finer steps, so the output error falls."""
    w, x = _layer(6, rows=6, cols=16, n=300)
    w[:, 3] *= 8.0
    x[:, 3] *= 0.05
    h = _hessian(x)
    got = clip_search(w, h, 3, 8)
    for a in (0, 8):
        g, hg = w[:, a:a + 8], h[a:a + 8, a:a + 8]
        m = g.abs().amax(1, keepdim=True)
        cands = []
        for i in range(10):
            c = torch.minimum(torch.maximum(g, -m * (1 - i / 20)), m * (1 - i / 20))
            sc, z = group_params(c, 3)
            cands.append(quantize_to(c, sc.unsqueeze(1), z.unsqueeze(1), 3))
        errs = torch.stack([(((q - g) @ hg) * (q - g)).sum(1) for q in cands])  # ratios x rows
        pick = errs.argmin(0)
        want = torch.stack([cands[pick[r]][r] for r in range(6)])
        assert torch.allclose(got[:, a:a + 8], want)
        assert (errs.min(0).values <= errs[0]).all()
    out_err = lambda v: ((w - v) @ x.t()).pow(2).mean().item()  # noqa: E731
    assert out_err(got) < 0.7 * out_err(rtn(w, 3, 8))


def test_awq_protects_the_weights_of_a_salient_input_feature():
    """The effect AWQ exists for (Lin et al. 2024, section 3.1): an input feature 50x larger than
    the others makes its weights' rounding error dominate the output; scaling that column up before
    rounding shrinks it. The output error falls far below RTN's."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=g, dtype=torch.float64)
    x[:, 5] *= 50.0
    w = torch.randn(32, 64, generator=g, dtype=torch.float64)
    out_err = lambda v: ((w - v) @ x.t()).pow(2).mean().item()  # noqa: E731
    q, alpha = awq(w, _hessian(x), x.abs().mean(0), 4, 64, clip=False)
    assert alpha > 0 and out_err(q) < 0.5 * out_err(rtn(w, 4, 64))
    assert packed_bytes(w, 4, 64, input_scale=True) == packed_bytes(w, 4, 64) + 2 * 64


def test_hqq_shrink_is_the_soft_threshold_at_p1_with_a_wider_dead_zone_below():
    # HQQ's shrink_lp(x, beta, p) minimises |e|^p + beta/2 (e - x)^2; at p = 1 that is the soft
    # threshold, checked here against a brute-force grid search
    x = torch.linspace(-1, 1, 41, dtype=torch.float64)
    grid = torch.linspace(-1.5, 1.5, 30001, dtype=torch.float64)
    beta = 4.0
    cost = grid.abs().unsqueeze(0) + beta / 2 * (grid.unsqueeze(0) - x.unsqueeze(1)) ** 2
    brute = grid[cost.argmin(1)]
    assert torch.allclose(shrink_lp(x, beta, 1.0), brute, atol=1e-4)
    assert torch.equal(shrink_lp(x, beta, 1.0), torch.sign(x) * torch.relu(x.abs() - 1 / beta))
    # below p = 1 the threshold |x|^(p-1) / beta grows as |x| falls: errors up to 0.25^(1/1.3) = 0.34
    # are zeroed, where the soft threshold zeroes only those up to 1 / beta = 0.25
    e, soft = shrink_lp(x, beta, 0.7), shrink_lp(x, beta, 1.0)
    small = (x.abs() > 0.26) & (x.abs() < 0.34)
    assert (e.abs() <= x.abs()).all() and (e[x.abs() < 0.34] == 0).all() and (soft[small] != 0).all()


def test_hqq_zero_points_lower_the_lp_error_of_every_group():
    torch.manual_seed(0)
    w = torch.distributions.StudentT(3.0).sample((16, 64)).double() * 0.02  # heavy tails: outlier weights
    err = lambda v, p=0.7: (v - w).abs().pow(p).mean(1)  # noqa: E731
    for bits in (2, 3, 4):
        minmax, fitted = hqq(w, bits, 32, iters=0), hqq(w, bits, 32)
        assert (err(fitted) <= err(minmax) + 1e-15).all()   # each group keeps its best zero point
        assert err(fitted).mean() < 0.98 * err(minmax).mean()
        assert err(fitted).mean() < err(rtn(w, bits, 32)).mean()
        # codes: at most 2^bits levels per group, values (q - z) s with fp16 scale and zero point
        s, z = hqq_group(w[:, :32], bits)
        assert torch.equal(s, s.half().double()) and torch.equal(z, z.half().double())
        q = torch.clamp(torch.round(w[:, :32] / s.unsqueeze(1) + z.unsqueeze(1)), 0, 2 ** bits - 1)
        assert torch.equal(fitted[:, :32], (q - z.unsqueeze(1)) * s.unsqueeze(1))
        assert all(len(torch.unique(fitted[r, :32])) <= 2 ** bits for r in range(16))
    # a narrow group far from 0 (its min-max zero point would overflow fp16) stays finite and close
    far = torch.full((2, 8), 10.0, dtype=torch.float64) + torch.rand(2, 8, dtype=torch.float64) * 1e-3
    s, z = hqq_group(far, 4)
    assert torch.isfinite(z).all() and (hqq(far, 4, 8) - far).abs().max() <= s.max()


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(8, 16)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16)) for _ in range(2))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = self.emb(x)
        for b in self.blocks:
            h = h + b(h)
        return self.head(h)


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_prune_model_sparsity_and_only_block_linears(criterion, pattern):
    torch.manual_seed(0)
    m = _Tiny()
    x = torch.randn(32, 5, 8)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    sp = prune_(m, criterion, x, 0.5, pattern)
    assert sorted(sp) == ["blocks.0.0", "blocks.0.2", "blocks.1.0", "blocks.1.2"]
    assert all(abs(v - 0.5) < 1e-6 for v in sp.values())
    assert torch.equal(m.head.weight, before["head.weight"]) and torch.equal(m.emb.weight, before["emb.weight"])
    if pattern:
        assert ((m.blocks[0][0].weight != 0).view(32, 4, 4).sum(-1) <= 2).all()


def test_sparsegpt_and_wanda_beat_magnitude_on_output_error():
    torch.manual_seed(0)
    m = _Tiny()
    x = torch.randn(64, 5, 8) * torch.linspace(0.1, 3, 8)
    ref = m(x).detach()
    errs = {}
    for c in ("magnitude", "wanda", "sparsegpt"):
        mm = _Tiny()
        mm.load_state_dict(m.state_dict())
        prune_(mm, c, x, 0.5)
        errs[c] = (mm(x) - ref).pow(2).mean().item()
    assert errs["sparsegpt"] < errs["magnitude"]


def test_failure_leaves_model_unchanged():
    torch.manual_seed(0)
    m = _Tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    calls = []

    def boom(mod, inp, out):  # block 1 fails while being calibrated, after block 0 was pruned
        calls.append(1)
        if calls:
            raise NetcompressError("calibration forward failed")

    m.blocks[1].register_forward_hook(boom)
    for crit in ("wanda", "sparsegpt"):
        calls.clear()
        with pytest.raises(NetcompressError):
            prune_(m, crit, [torch.randn(4, 5, 8), torch.randn(4, 5, 8)], 0.5)
        assert set(m.state_dict()) == set(before)  # no mask buffers left behind
        assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    with pytest.raises(NetcompressError):
        prune_(m, "wanda", torch.randn(4, 5, 8), 0.5, "2:3")
    with pytest.raises(NetcompressError):
        prune_(m, "sparsegpt", None, 0.5)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_weight_only_model_levels_and_error():
    torch.manual_seed(0)
    m = _Tiny()
    x = torch.randn(64, 5, 8)
    ref = m(x).detach()
    outs = {}
    for meth in ("rtn", "hqq", "gptq", "awq"):
        mm = _Tiny()
        mm.load_state_dict(m.state_dict())
        info = quantize_weights_(mm, meth, 4, 8, calibration=x if meth in ("gptq", "awq") else None)
        assert sorted(info) == ["blocks.0.0", "blocks.0.2", "blocks.1.0", "blocks.1.2"]
        w = mm.blocks[0][0].weight
        if meth != "awq":  # AWQ's levels are a group's grid divided by each column's input scale
            assert all(len(torch.unique(w[r, a:a + 8])) <= 16 for r in range(32) for a in (0, 8))
        outs[meth] = (mm(x) - ref).pow(2).mean().item()
    # (AWQ lowers each layer's own output error, tested above; on this random model the layers'
    # errors add up to more than RTN's, so no model-level order is asserted for it)
    assert outs["gptq"] < outs["rtn"]
    for meth in ("gptq", "awq"):
        with pytest.raises(NetcompressError, match=f"{meth} needs calibration"):
            quantize_weights_(_Tiny(), meth, 4, 8)


def _gpt():
    from netcompress.models.transformers import GPT

    torch.manual_seed(0)
    return GPT(num_classes=32, input_size=8, dim=16, depth=2, n_heads=2).eval()


def test_input_groups_follow_the_forward_pass_not_names():
    from netcompress.core.layerwise import block_linears, input_groups
    from netcompress.models.transformers import ViT

    m = _gpt()
    x = torch.randint(0, 32, (2, 8))
    block, lin = block_linears(m)[1]
    groups = [[n.rsplit(".", 1)[-1] for n in g] for g in input_groups(m, block, lin, x)]
    assert groups == [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]
    v = ViT(num_classes=3, in_channels=1, input_size=8, patch=4, dim=16, depth=1, num_heads=2, stem=8).eval()
    block, lin = block_linears(v)[0]
    assert [list(g) for g in input_groups(v, block, lin, torch.randn(2, 1, 8, 8))] == [[n] for n in lin]


@pytest.mark.parametrize("mode", ["layer", "block"])
def test_layer_sequential_calibrates_on_the_already_transformed_layers(mode):
    """'layer' mode: o_proj is calibrated after v_proj was transformed, down_proj after gate/up. With
    every transform zeroing its layer, o_proj and down_proj then see zero inputs; in 'block' mode
    (one pass per block) they see the unchanged block's inputs."""
    from netcompress.core.layerwise import calibration_inputs, sequential_

    m = _gpt()
    seen: dict[str, float] = {}

    def zero(name, lin, stat):
        seen[name.rsplit(".", 1)[-1] + name.split(".")[1]] = float(stat.abs().sum())
        lin.weight.zero_()

    sequential_(m, calibration_inputs(torch.randint(0, 32, (4, 8)), 4), "hessian", zero, sequential=mode)
    assert seen["q_proj0"] > 0 and seen["gate_proj0"] > 0
    if mode == "layer":
        assert seen["o_proj0"] == 0 and seen["down_proj0"] == 0
    else:
        assert seen["o_proj0"] > 0 and seen["down_proj0"] > 0
    with pytest.raises(NetcompressError, match="sequential"):
        sequential_(m, [torch.randint(0, 32, (2, 8))], "hessian", zero, sequential="blocks")


def test_layer_mode_replays_the_captured_block_inputs_exactly(monkeypatch):
    """Replaying each block's captured (args, kwargs) gives the same compressed model as running
    the whole prefix for every group; a block called with a cache-like object is not replayed."""
    import netcompress.core.layerwise as lw

    x = torch.randint(0, 32, (8, 8))
    a, b = _gpt(), _gpt()
    block = lw.block_linears(a)[1][0]
    assert lw.capture_block_inputs(a, block, [x]) is not None  # the replay route is the one taken
    prune_(a, "sparsegpt", x, 0.5, samples=8)
    monkeypatch.setattr(lw, "capture_block_inputs", lambda *args: None)  # the full-pass route
    prune_(b, "sparsegpt", x, 0.5, samples=8)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), atol=1e-6), n
    assert lw._replayable((torch.ones(1), None, 3, (torch.ones(2), torch.ones(2))))
    assert not lw._replayable([object()])
