"""timm: and hf: model sources, dict inputs through measure / fit / evaluate / KD, and every transform
(low-rank, depthwise-separable where a model has a standard k x k conv, weight pruning, k-means +
archive, save / load, measure) on timm and Hugging Face models."""
import copy
import json
import re

import pytest
import torch

import netcompress as nc
from netcompress.core.batch import call, logits_of
from netcompress.core.errors import NetcompressError
from netcompress.core.layers import read_by_ancestor
from netcompress.design.separable import is_standard_conv
from netcompress.models.io import FORMAT, VERSION, describe
from netcompress.models.sources import TINY_CONFIGS, parse_ref

TEXT_ARCHS = [k for k, v in TINY_CONFIGS.items() if v["task"] != "image-classification"]


def hf(arch: str, **kw):
    return nc.models.create(f"hf:{arch}", **{**TINY_CONFIGS[arch], **kw}).eval()


def example(name: str):
    g = torch.Generator().manual_seed(0)
    if name.startswith("timm:") or TINY_CONFIGS.get(name[3:], {}).get("task") == "image-classification":
        return torch.randn(2, 3, 32, 32, generator=g)
    ids = torch.randint(2, 128, (2, 12), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def build(name: str):
    if name.startswith("hf:"):
        return hf(name[3:], num_classes=5)
    return nc.models.create(name, num_classes=5, input_size=32).eval()


def out(model, x):
    with torch.no_grad():
        return logits_of(call(model, x))


# ------------------------------------------------------------------ sources


def test_parse_ref_reads_json_values():
    assert parse_ref("resnet18") == ("resnet18", {})
    assert parse_ref("vit?img_size=32&pretrained=false&act=gelu") == ("vit", {"img_size": 32, "pretrained": False, "act": "gelu"})


def test_timm_source_builds_offline_and_maps_argument_names():
    m = nc.models.create("timm:test_vit", num_classes=7, in_channels=1, input_size=32)
    assert m.netcompress_spec == {"name": "timm:test_vit", "kwargs": {"num_classes": 7, "in_chans": 1, "img_size": 32}}
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    cnn = nc.models.create("timm:test_resnet?drop_rate=0.1", num_classes=3, input_size=20)  # CNNs take no img_size
    assert cnn.netcompress_spec["kwargs"] == {"num_classes": 3, "drop_rate": 0.1}
    assert cnn.eval()(torch.randn(1, 3, 20, 20)).shape == (1, 3)


def test_unknown_timm_and_hf_names_are_one_clear_error():
    with pytest.raises(NetcompressError, match="no such timm model"):
        nc.models.create("timm:resnet_does_not_exist")
    with pytest.raises(NetcompressError, match="task 'speech'"):
        nc.models.create("hf:bert?task=speech")
    with pytest.raises(NetcompressError, match="no config file"):
        nc.models.create("hf:/nonexistent/config.json")
    # fields that do not fit together: a padding id outside the vocabulary (transformers asserts)
    with pytest.raises(NetcompressError, match="cannot build a 'llama' model: Padding_idx"):
        nc.models.create("hf:llama?task=causal-lm&vocab_size=16&pad_token_id=32&hidden_size=16&num_attention_heads=2"
                         "&num_hidden_layers=1&intermediate_size=32")
    # fields that contradict each other in a strict config class (GPT-Neo: 24 attention types, 2 layers)
    with pytest.raises(NetcompressError, match=r"hf:gpt_neo: bad config fields .*num_layers"):
        nc.models.create("hf:gpt_neo?task=causal-lm&num_layers=2&hidden_size=32&num_heads=4&vocab_size=64")


def test_hf_hub_id_offline_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(NetcompressError, match="hub could not give its config"):
        nc.models.create("hf:someone/not-a-local-model")


def test_hf_from_local_config_folder_and_task(tmp_path):
    cfg = {"model_type": "bert", **{k: v for k, v in TINY_CONFIGS["bert"].items() if k != "task"}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    m = nc.models.create(f"hf:{tmp_path}", num_classes=3)
    assert type(m).__name__ == "BertForSequenceClassification" and m.config.num_labels == 3
    assert m.netcompress_spec["name"] == "hf:bert"  # rebuilt from the stored config, not from the folder
    lm = nc.models.create(f"hf:{tmp_path / 'config.json'}?task=causal-lm&is_decoder=true")
    assert type(lm).__name__ == "BertLMHeadModel"


@pytest.mark.parametrize("name", ["timm:test_vit", "hf:bert", "hf:gpt2", "hf:llama"])
def test_named_sources_save_load_and_archive_without_trust(name, tmp_path):
    m = build(name)
    x = example(name)
    nc.models.save(m, tmp_path / "m.pt")
    for again in (nc.models.load(tmp_path / "m.pt"), nc.models.create(str(tmp_path / "m.pt"))):
        assert torch.equal(out(m, x), out(again, x))
    nc.archive.pack(m, tmp_path / "m.ncz")
    assert torch.equal(out(m, x), out(nc.archive.unpack(tmp_path / "m.ncz"), x))


def test_tied_weights_and_non_persistent_buffers_survive_save_and_archive(tmp_path):
    g = hf("gpt2")  # lm_head.weight is transformer.wte.weight
    nc.models.save(g, tmp_path / "g.pt")
    blob = torch.load(tmp_path / "g.pt", weights_only=True)
    assert "lm_head.weight" not in blob["state"] and json.loads(blob["arch"])["tied"] == {"lm_head.weight": "transformer.wte.weight"}
    for r in (nc.models.load(tmp_path / "g.pt"), nc.archive.unpack(nc.archive.pack(g, tmp_path / "g.ncz") and tmp_path / "g.ncz")):
        assert r.lm_head.weight is r.transformer.wte.weight
    llama = hf("llama")
    with torch.no_grad():
        llama.model.rotary_emb.inv_freq.mul_(0.5)  # a non-persistent buffer: must come back as saved
    nc.models.save(llama, tmp_path / "l.pt")
    r = nc.models.load(tmp_path / "l.pt")
    assert torch.equal(r.model.rotary_emb.inv_freq, llama.model.rotary_emb.inv_freq)
    x = example("hf:llama")
    assert torch.equal(out(llama, x), out(r, x))


def test_files_of_the_previous_layout_still_load(tmp_path):
    """Before tied tensors and non-persistent buffers were stored: every state-dict key, no `tied`."""
    m = hf("bert", num_classes=2)
    arch = describe(m)
    state = {k: v.detach().clone() for k, v in m.state_dict().items()}
    torch.save({"format": FORMAT, "version": VERSION, "arch": json.dumps(arch), "state": state}, tmp_path / "old.pt")
    x = example("hf:bert")
    assert torch.equal(out(m, x), out(nc.models.load(tmp_path / "old.pt"), x))


def test_recipe_names_a_timm_model(tmp_path):
    from netcompress.recipe import run_recipe

    (tmp_path / "r.yaml").write_text(
        "name: t\nseed: 0\ndata: digits\nmodel: timm:test_resnet\n"
        "train: {epochs: 1, lr: 0.05, batch_size: 64, max_steps: 2}\nmeasure: {latency: false}\n"
        "stages:\n  - pack: {coding: huffman}\n")
    res = run_recipe(tmp_path / "r.yaml", out=tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "model.pt").is_file()
    again = nc.models.load(tmp_path / "run" / "model.pt")  # no trust_python: timm: names no code
    assert again.netcompress_spec["name"] == "timm:test_resnet"
    assert res is not None


# ------------------------------------------------------------------ dict inputs on real data


def _pydoc_text(n_train: int = 128, n_test: int = 48, length: int = 64):
    """Which of two Python-manual topics (format strings, compound statements) a 64-byte window comes
    from; token ids are the bytes + 1 (0 = pad)."""
    from pydoc_data.topics import topics

    names = ["formatstrings", "compound"]
    xs = {"train": [], "test": []}
    ys = {"train": [], "test": []}
    for label, name in enumerate(names):
        raw = topics[name].encode()
        windows = [raw[i:i + length] for i in range(0, len(raw) - length, length)]
        for split, chunk in (("train", windows[:n_train]), ("test", windows[-n_test:])):  # disjoint parts
            xs[split] += [torch.tensor(list(w)) + 1 for w in chunk]
            ys[split] += [label] * len(chunk)

    def pack(split):
        ids = torch.stack(xs[split])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.tensor(ys[split])

    return nc.data.DataBundle.from_tensors("pydoc-topics", pack("train"), pack("test"), num_classes=2, batch_size=32)


def _text_bert(hidden: int = 32, layers: int = 2):
    return nc.models.create("hf:bert", num_classes=2, vocab_size=257, max_position_embeddings=64, hidden_size=hidden,
                            num_hidden_layers=layers, num_attention_heads=2, intermediate_size=2 * hidden,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def test_hf_text_classifier_on_dict_batches_measure_fit_evaluate_kd(one_thread):
    data = _pydoc_text()
    x = data.example
    assert isinstance(x, dict) and x["input_ids"].shape == (8, 64)
    torch.manual_seed(0)
    teacher = _text_bert()
    before = nc.train.evaluate(teacher, data)
    hist = nc.train.fit(teacher, data, epochs=6, lr=3e-3, optimizer="adamw", weight_decay=0.0, progress=False)
    assert hist.epochs[-1]["loss"] < hist.epochs[0]["loss"]
    acc = nc.train.evaluate(teacher, data)
    assert acc > 0.55 and acc > before  # 2 balanced classes, 96 test windows
    met = nc.measure(teacher, data, min_run_time=0.01)
    assert met.accuracy == pytest.approx(acc) and met.macs > 0 and met.bytes > 0 and met.latency_ms_b64 > 0
    student = _text_bert(hidden=16, layers=1)
    res = nc.distill.kd(teacher, student, data, temperature=2.0, epochs=2, lr=3e-3)
    assert 0.0 <= res.accuracy <= 1.0 and any("kd" in h[-1] for h in res.histories.values())
    assert res.accuracy == pytest.approx(nc.train.evaluate(res.student, data))


def test_hf_vit_trains_on_mnist_images(mnist_small, one_thread):
    data = mnist_small.subset(256, 128)
    torch.manual_seed(0)
    vit = nc.models.create_for("hf:vit", data, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, patch_size=7)
    assert vit.config.num_channels == 1 and vit.config.image_size == 28 and vit.config.num_labels == 10
    hist = nc.train.fit(vit, data, epochs=3, lr=3e-3, optimizer="adamw", weight_decay=0.0, progress=False)
    assert hist.epochs[-1]["loss"] < hist.epochs[0]["loss"]
    assert nc.measure(vit, data, latency=False).accuracy > 0.2  # 10 classes


def test_calibrated_stages_take_dict_batches_of_a_hugging_face_text_model(one_thread, tmp_path):
    """Wanda, GPTQ and the export stage (its check inputs and int8 calibration) on input_ids /
    attention_mask batches: they sliced the batch as a tensor ('unhashable type: slice') or refused it."""
    data = _pydoc_text(64, 32)
    torch.manual_seed(0)
    bert = _text_bert()
    lin = [n for n, m in bert.named_modules() if isinstance(m, torch.nn.Linear) and ".encoder." in n]
    sparse = nc.recipe.apply("sparsify", bert, data, samples=16, out_dir=tmp_path / "s").model
    w = dict(sparse.named_modules())
    assert all(abs((w[n].weight == 0).float().mean().item() - 0.5) < 0.02 for n in lin)
    quant = nc.recipe.apply("weight-only", bert, data, samples=16, group_size=32, out_dir=tmp_path / "q").model
    q = dict(quant.named_modules())
    assert all(q[n].weight.unique().numel() <= 16 * (q[n].weight.numel() // 32) for n in lin)  # 16 levels per group
    for int8 in (False, True):
        ex = nc.recipe.apply("export", bert, data, int8=int8, calibration_samples=16, check_samples=16, latency=False,
                             int8_tolerance=1.0, out_dir=tmp_path / f"e{int8}").extra["export"]
        assert ex["check"]["passed"] and ex["check"]["samples"] == 16


def test_early_exits_on_models_they_do_not_take_are_one_clear_error():
    text = _pydoc_text(32, 16)
    with pytest.raises(NetcompressError, match="early_exit: BertForSequenceClassification takes dict inputs; .* not supported"):
        nc.recipe.apply("dynamic", _text_bert(), text, max_steps=1, latency=False, holdout=8)
    lm_data = nc.data.load("pydoc-text-tiny")
    lm = nc.models.create_for("hf:gpt2", lm_data, **{**TINY_CONFIGS["gpt2"], "vocab_size": lm_data.num_classes})
    with pytest.raises(NetcompressError, match=r"per-token logits \(2, 64, 256\): a language model"):
        nc.recipe.apply("dynamic", lm, lm_data, max_steps=1, latency=False, holdout=8)


# ------------------------------------------------------------------ hidden-state + attention KD


def _hidden_case(name: str, mnist_small):
    """(teacher, data, expected attention projections of the last block) on real data: Python-manual
    bytes for text models, MNIST for image models."""
    if name in ("hf:bert", "hf:distilbert"):
        data = _pydoc_text(32, 16)
        kw = dict(vocab_size=257, max_position_embeddings=64)
        return nc.models.create(name, num_classes=2, **{**TINY_CONFIGS[name[3:]], **kw}), data
    if name == "hf:gpt2":
        text = nc.data.load("pydoc-text-tiny")
        return nc.models.create_for(name, text, **{**TINY_CONFIGS["gpt2"], "vocab_size": text.num_classes}), text
    data = mnist_small.subset(32, 16)
    if name == "hf:vit":
        return nc.models.create_for(name, data, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, patch_size=7), data
    return nc.models.create_for(name, data, img_size=28, patch_size=7, in_chans=1), data


@pytest.mark.parametrize("name,attention", [
    ("hf:bert", r"bert\.encoder\.layer\.1\.attention\.self\.(query|key|value)"),
    ("hf:distilbert", r"distilbert\.transformer\.layer\.1\.attention\.(q|k|v)_lin"),
    ("hf:gpt2", r"transformer\.h\.1\.attn\.c_attn"),
    ("hf:vit", r"vit\.layers\.1\.attention\.(q|k|v)_proj"),
    ("timm:test_vit", r"blocks\.\d+\.attn\.qkv")])
def test_hidden_and_attention_kd_on_foreign_transformers(name, attention, mnist_small, one_thread):
    """TinyBERT / MiniLM distillation finds the block stack (a ModuleList or a timm Sequential) and the
    q / k / v projections of Hugging Face and timm attention, and trains a student cut from the teacher
    with both terms (it used to find neither and ask for attention_weight 0)."""
    torch.manual_seed(0)
    teacher, data = _hidden_case(name, mnist_small)
    student = nc.distill.student_from_teacher(teacher, data, width=0.5)
    before = copy.deepcopy(student.state_dict())
    r = nc.distill.distill("hidden", teacher, student, data, train=nc.train.TrainConfig(epochs=1, max_steps=3, batch_size=8))
    s_att, t_att = r.extra["attention_layers"]
    assert s_att == t_att and all(re.fullmatch(attention, n) for n in s_att)
    logs = r.histories["hidden"]
    assert all(torch.isfinite(torch.tensor([e["hidden"], e["attention"]])).all() and e["hidden"] > 0 for e in logs)
    assert any(not torch.equal(v, r.student.state_dict()[k]) for k, v in before.items())


def test_a_linear_the_forward_reads_instead_of_calling_is_left_to_itself(mnist_small, one_thread):
    """timm's BEiT computes q / k / v as F.linear(x, self.qkv.weight, bias): the layer is never called,
    so its inputs cannot be observed. Wanda leaves it dense (it failed: 'was not called by the forward
    pass') and HiddenKD keeps to the hidden states (it failed: 'produced no output yet')."""
    (tx, ty), (vx, vy) = ((torch.nn.functional.interpolate(a, size=32).expand(-1, 3, -1, -1).contiguous(), b)
                          for a, b in (next(iter(mnist_small.loader(s, batch_size=32, shuffle=False))) for s in ("train", "test")))
    data = nc.data.DataBundle.from_tensors("mnist-rgb", (tx, ty), (vx, vy), 10, batch_size=16)
    beit = nc.models.create("timm:beit_base_patch16_224", num_classes=10, embed_dim=32, depth=2, num_heads=2,
                            img_size=32, patch_size=8, seed=0)
    assert read_by_ancestor(beit, "blocks.0.attn.qkv") == "blocks.0.attn"
    w = dict(nc.recipe.apply("sparsify", beit, data, samples=16).model.named_modules())
    assert (w["blocks.0.attn.qkv"].weight == 0).float().mean() == 0
    assert abs((w["blocks.0.attn.proj"].weight == 0).float().mean().item() - 0.5) < 0.02
    r = nc.distill.distill("hidden", beit, nc.distill.student_from_teacher(beit, data, width=0.5), data,
                           train=nc.train.TrainConfig(epochs=1, max_steps=2, batch_size=8))
    assert r.extra["attention_layers"] is None and all(e["hidden"] > 0 for e in r.histories["hidden"])


def test_hidden_kd_refuses_models_without_token_blocks(mnist_small):
    data = mnist_small.subset(16, 8)
    cnn = nc.models.create_for("timm:test_resnet", data)
    with pytest.raises(NetcompressError, match="ResNet has no repeated transformer blocks .* use fitnet or at"):
        nc.distill.distill("hidden", cnn, copy.deepcopy(cnn), data, max_steps=1)
    mixer = torch.nn.Sequential(torch.nn.Flatten(2), torch.nn.Sequential(*[torch.nn.Sequential(
        torch.nn.LayerNorm(28), torch.nn.Linear(28, 28)) for _ in range(2)]), torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    with pytest.raises(NetcompressError, match=r"no attention projections found in '1\.1' / '1\.1'; set attention_weight 0"):
        nc.distill.transformer.HiddenKD(mixer, copy.deepcopy(mixer), attention_weight=1.0)
    m = nc.distill.transformer.HiddenKD(mixer, copy.deepcopy(mixer))  # by default: hidden states only
    assert m.att is None and m.attention_weight == 0 and m.pairs == [("1.0", "1.0"), ("1.1", "1.1")]


# ------------------------------------------------------------------ every transform


def _transforms(name: str, tmp_path):
    m = build(name)
    x = example(name)
    ref = out(m, x)
    state = copy.deepcopy(m.state_dict())
    try:
        thin = nc.design.lowrank(m, budget=0.6)
    except NetcompressError as e:  # most parameters in layers low-rank cannot factorise (embeddings; convs
        # whose forward hands them to a function that reads their stride): one clear error
        assert name in ("hf:convbert", "hf:canine", "hf:mobilenet_v2") and re.search(r"budget 0.6 of params .* is unreachable: the unfactorised part costs", str(e))
    else:
        assert sum(p.numel() for p in thin.parameters()) < sum(p.numel() for p in m.parameters())
        assert out(thin, x).shape == ref.shape
        nc.models.save(thin, tmp_path / "thin.pt")
        assert torch.equal(out(thin, x), out(nc.models.load(tmp_path / "thin.pt"), x))
    if any(is_standard_conv(c) and read_by_ancestor(m, n) is None
           for n, c in m.named_modules()):  # depthwise-separable conversion applies (a k x k conv no forward reads)
        sep = nc.design.separable(m)
        assert out(sep, x).shape == ref.shape
        assert nc.measure(sep, example_inputs=x, latency=False).macs < nc.measure(m, example_inputs=x, latency=False).macs
        nc.models.save(sep, tmp_path / "sep.pt")
        assert torch.equal(out(sep, x), out(nc.models.load(tmp_path / "sep.pt"), x))
    sparse = copy.deepcopy(m)
    nc.prune.weights_(sparse, "l1", sparsity=0.5)
    info = nc.quantize.cluster_(sparse, bits=4)
    assert info and out(sparse, x).shape == ref.shape
    nc.archive.pack(sparse, tmp_path / "s.ncz")
    assert torch.equal(out(sparse, x), out(nc.archive.unpack(tmp_path / "s.ncz"), x))
    met = nc.measure(sparse, example_inputs=x, latency=False)
    assert met.macs > 0 and met.nonzero_params < met.params and met.bytes > 0
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())  # the original is unchanged
    assert torch.equal(out(m, x), ref)


@pytest.mark.parametrize("name", ["timm:test_resnet", "timm:test_vit", "hf:gpt2", "hf:llama"])
def test_every_transform_on_representative_models(name, tmp_path):
    _transforms(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["timm:resnet18", "timm:efficientnet_b0", "timm:vit_tiny_patch16_224",
                                  "timm:deit_tiny_patch16_224", "timm:convnext_atto", "timm:mobilenetv3_small_050"]
                         + [f"hf:{k}" for k in TINY_CONFIGS])
def test_every_transform_on_every_listed_model(name, tmp_path):
    _transforms(name, tmp_path)


def test_gpt2_conv1d_lowrank_is_exact_at_full_rank():
    g = hf("gpt2")
    full = nc.design.lowrank(g, rank={"transformer.h.0.attn.c_attn": 32}, allow_larger=True)
    assert type(full.transformer.h[0].attn.c_attn).__name__ == "Sequential"
    x = example("hf:gpt2")
    assert torch.allclose(out(full, x), out(g, x), atol=1e-5)
    assert "lm_head" not in {p.name for p in nc.design.plan_lowrank(g, energy=0.9)}  # tied to the embedding


def test_separable_and_lowrank_leave_out_layers_the_forward_reads():
    vit = hf("vit")  # ViTModel.forward reads patch_embeddings.projection.weight.dtype
    thin = nc.design.lowrank(vit, budget=0.7)
    assert isinstance(thin.vit.embeddings.patch_embeddings.projection, torch.nn.Conv2d)
    assert out(thin, example("hf:vit")).shape == (2, 10)
    with pytest.raises(NetcompressError, match="reads its attributes"):
        nc.design.separable(vit, filter_fn=lambda m, n: n.endswith("projection"))


def _same_pad(x, conv):  # TensorFlow "same" padding, reading the conv's stride and kernel (HF MobileNet)
    return torch.nn.functional.pad(x, [(conv.kernel_size[0] - 1) // 2] * 4) if conv.stride[0] == 1 else x


class _HandsItsConvAway(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(3, 16, 3), torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.conv(_same_pad(x, self.conv)).mean((2, 3)))

    def forward_intermediates(self, x):  # a type check reads nothing (timm's HRNet does this)
        assert isinstance(self.head, torch.nn.Linear) and type(self.head) is torch.nn.Linear
        return [self.conv(x)]


def test_a_layer_handed_to_a_function_counts_as_read():
    m, x = _HandsItsConvAway().eval(), torch.randn(2, 3, 8, 8)
    assert read_by_ancestor(m, "conv") == "(the model)" and read_by_ancestor(m, "head") is None
    with pytest.raises(NetcompressError, match="'conv' cannot be replaced: the forward code of '\\(the model\\)' reads"):
        nc.design.lowrank(m, rank={"conv": 2}, allow_larger=True)
    thin = nc.design.lowrank(m, rank={"head": 2}, allow_larger=True)
    assert isinstance(thin.conv, torch.nn.Conv2d) and not isinstance(thin.head, torch.nn.Linear)
    assert out(thin, x).shape == (2, 4)


def test_netcompress_list_names_the_sources(capsys):
    from netcompress.cli import main

    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert "timm:NAME" in text and "hf:MODEL_TYPE" in text and "qwen2" in text


def test_torchvision_builders_with_a_deprecated_init_default_build_without_a_warning():
    """googlenet and inception_v3 warn (FutureWarning) unless init_weights is given: the loader asks
    for today's initialisation explicitly, so a user's model builds silently and as before."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        m = nc.models.create("torchvision:googlenet", num_classes=10, aux_logits=False)
    assert type(m).__name__ == "GoogLeNet" and m.fc.out_features == 10
