"""Named model sources that run no code of the user's: ``timm:NAME`` and ``hf:NAME_OR_CONFIG``.

Both are data: a model name plus keyword arguments, so a saved model file or a ``.ncz`` archive that
names one is rebuilt without ``trust_python``. Settings may follow the name as a query string
(``timm:resnet18?pretrained=true&drop_rate=0.1``, ``hf:bert?task=sequence-classification&hidden_size=64``)
or be passed as keyword arguments; values are read as JSON where they parse (``true``, ``3``, ``0.1``).

* ``timm:NAME`` builds ``timm.create_model(NAME, pretrained=False, ...)``; ``pretrained=true`` downloads
  timm's weights (needs internet). ``in_channels`` becomes ``in_chans`` and ``input_size`` becomes
  ``img_size`` for the models that take one (vision transformers); CNNs run at any size.
* ``hf:NAME`` builds a Hugging Face model from a config: NAME is a ``model_type`` (``bert``, ``gpt2``,
  ``llama``, ...: ``AutoConfig.for_model(NAME, **fields)``, where the fields come from the query string
  or a ``config={...}`` dict), a local folder holding ``config.json`` or a ``.json`` file, or a hub id
  (needs internet; offline it is a clear error). ``task`` picks the Auto class: ``sequence-classification``
  (the default for text), ``image-classification`` (the default when the config has ``image_size``),
  ``causal-lm``, ``masked-lm``, ``token-classification`` or ``base``. Weights are random unless
  ``pretrained=true`` (hub or local folder with weights).

The spec stored on the model (``model.netcompress_spec``) always names the source by its full config and
``pretrained=False``: a saved model brings its own weights, so reloading never downloads anything.

Example:
    m = build_timm("resnet18", {"num_classes": 10})
    m = build_hf("bert", {"task": "sequence-classification", "hidden_size": 32,
                          "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64})
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from torch import nn

from netcompress.core.errors import NetcompressError

HF_TASKS = {
    "base": "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "image-classification": "AutoModelForImageClassification",
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "token-classification": "AutoModelForTokenClassification",
}
_CLASSIFY = ("sequence-classification", "image-classification", "token-classification")
# config keys that describe where a config came from, not the architecture
_DROP = ("transformers_version", "_name_or_path", "architectures", "model_type", "torch_dtype", "dtype")


_TEXT = dict(vocab_size=128, max_position_embeddings=64)
_DECODER = dict(_TEXT, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=64, bos_token_id=0, eos_token_id=0, pad_token_id=0)
# small configs of the Hugging Face architectures netcompress is tested on (tests, benchmark B11):
# `create("hf:" + arch, **TINY_CONFIGS[arch])`
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "bert": dict(_TEXT, task="sequence-classification", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64),
    "distilbert": dict(_TEXT, task="sequence-classification", dim=32, n_layers=2, n_heads=4, hidden_dim=64),
    "roberta": dict(_TEXT, task="sequence-classification", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=66, pad_token_id=1),
    "gpt2": dict(task="causal-lm", vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                 eos_token_id=0, pad_token_id=0),
    "vit": dict(task="image-classification", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, image_size=32, patch_size=8),
    "llama": dict(_DECODER, task="causal-lm"),
    "qwen2": dict(_DECODER, task="causal-lm"),
    "mistral": dict(_DECODER, task="causal-lm"),
    # causal LMs whose forwards differ from LLaMA's (ALiBi, multi-query fused qkv, parameter-free or
    # hand-written norms, q/k norms, partial rotary, parallel blocks)
    **{arch: dict(_DECODER, task="causal-lm") for arch in ("bloom", "falcon", "olmo", "olmo2", "cohere", "phi",
                                                           "gpt_neox", "gpt_bigcode")},
    "opt": dict(_DECODER, task="causal-lm", ffn_dim=64, word_embed_proj_dim=32),
    # encoders and vision models whose forwards differ from BERT's / ViT's (element-wise torch.min,
    # torch.multiply, cat(axis=), 0-d tensor lengths, one-row embeddings, no get_input_embeddings,
    # attention holding a sequence-reduction conv, a config choosing among several task classes,
    # register tokens concatenated with the patches)
    **{arch: dict(_TEXT, task="sequence-classification", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64) for arch in ("mpnet", "convbert", "longformer", "mra", "canine")},
    **{arch: dict(task="image-classification", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, image_size=32, patch_size=8) for arch in ("deit", "dinov2_with_registers")},
    **{arch: dict(task="image-classification", hidden_sizes=[16, 32], depths=[1, 1], embedding_size=8, image_size=32)
       for arch in ("resnet", "regnet")},
    "convnext": dict(task="image-classification", hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, image_size=32),
    "mobilenet_v2": dict(task="image-classification", image_size=32, depth_multiplier=0.25),
    **{arch: dict(task="image-classification", image_size=32) for arch in ("segformer", "mobilevit", "pvt_v2", "levit",
                                                                          "textnet")},
}


SOURCES_HELP = [
    "timm:NAME[?k=v&...]       any timm model (timm.list_models()), pretrained=false unless ?pretrained=true",
    "hf:MODEL_TYPE[?k=v&...]   a Hugging Face model from config fields (task=sequence-classification|"
    "image-classification|causal-lm|masked-lm|token-classification|base)",
    "hf:CONFIG_DIR|FILE.json   a Hugging Face model from a local config; hf:HUB_ID needs internet",
    f"  tested Hugging Face architectures: {', '.join(TINY_CONFIGS)}",
    "torchvision:NAME, python:module:factory (needs trust), imagefolder:PATH data, a saved model file",
]


def _value(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v


def parse_ref(ref: str) -> tuple[str, dict[str, Any]]:
    """Split ``NAME?key=value&...`` into the name and its settings (values parsed as JSON where possible).

    Example:
        >>> parse_ref("resnet18?pretrained=true&drop_rate=0.1")
        ('resnet18', {'pretrained': True, 'drop_rate': 0.1})
    """
    name, _, query = ref.partition("?")
    kw = {k: _value(v) for k, v in parse_qsl(query, keep_blank_values=True, strict_parsing=False)} if query else {}
    if query and not kw:
        raise NetcompressError(f"{ref!r}: cannot read the settings after '?' (write key=value&key=value)")
    return name, kw


def build_timm(name: str, kwargs: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """``timm.create_model`` with netcompress's argument names; returns (model, kwargs to rebuild it)."""
    try:
        import timm
    except ImportError:
        raise NetcompressError("timm: models need the timm package (pip install timm)") from None
    kw = dict(kwargs)
    pretrained = bool(kw.pop("pretrained", False))
    if "in_channels" in kw:
        kw["in_chans"] = kw.pop("in_channels")
    size = kw.pop("input_size", None)
    if not timm.is_model(name):
        near = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise NetcompressError(f"timm:{name}: no such timm model" + (f"; similar: {', '.join(near)}" if near else ""))
    if size is not None and "img_size" not in kw:
        try:  # models with position embeddings or windows need the size at build time
            return _timm_create(timm, name, pretrained, {**kw, "img_size": size}), {**kw, "img_size": size}
        except TypeError as e:
            if "img_size" not in str(e):
                raise NetcompressError(f"timm:{name}: {e}") from None
    return _timm_create(timm, name, pretrained, kw), kw


def _timm_create(timm: Any, name: str, pretrained: bool, kw: dict[str, Any]) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=pretrained, **kw)
    except TypeError:
        raise
    except (RuntimeError, ValueError, AssertionError, KeyError) as e:
        raise NetcompressError(f"timm:{name}: cannot build with {kw}: {type(e).__name__}: {e}") from None
    except OSError as e:  # pretrained weights not reachable
        raise NetcompressError(f"timm:{name}?pretrained=true: weights could not be downloaded ({e}); "
                               "build with pretrained=false offline, or load a saved model file") from None


def _hf_config(name: str, fields: dict[str, Any], pretrained: bool) -> Any:
    from transformers import AutoConfig, CONFIG_MAPPING

    path = Path(name)
    try:
        if path.suffix == ".json" or path.is_dir():
            file = path / "config.json" if path.is_dir() else path
            if not file.is_file():
                raise NetcompressError(f"hf:{name}: no config file {file}")
            try:
                raw = json.loads(file.read_text())
            except (OSError, ValueError) as e:
                raise NetcompressError(f"hf:{name}: {file} is not a readable JSON config ({e})") from None
            if not isinstance(raw, dict) or not isinstance(raw.get("model_type"), str):
                raise NetcompressError(f"hf:{name}: {file} has no 'model_type' field")
            model_type = raw["model_type"]
            if model_type not in CONFIG_MAPPING:
                raise NetcompressError(f"hf:{name}: model_type {model_type!r} is not known to transformers")
            return AutoConfig.for_model(model_type, **{**_strip(raw), **fields})
        if name in CONFIG_MAPPING:
            return AutoConfig.for_model(name, **fields)
        return AutoConfig.from_pretrained(name, **fields)
    except NetcompressError:
        raise
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NetcompressError(
            f"hf:{name}: not a local config folder / .json file, not a model type known to transformers "
            f"(e.g. {', '.join(sorted(CONFIG_MAPPING)[:6])}, ...), and the Hugging Face hub could not give its "
            f"config ({first}); offline, build from a model type or a local config") from None
    except (TypeError, ValueError, KeyError, _strict_config_error()) as e:
        first = str(e).strip().splitlines()
        raise NetcompressError(f"hf:{name}: bad config fields {sorted(fields)}: "
                               f"{' '.join(first[:2]) if first else type(e).__name__}") from None


def _strict_config_error() -> type[Exception]:
    """The error huggingface_hub's strict config dataclasses raise when fields contradict each other
    (GPT-Neo's attention_types against num_layers); ValueError where that package has none."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return ValueError
    return StrictDataclassError


def _strip(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in _DROP}


def build_hf(name: str, kwargs: dict[str, Any]) -> tuple[nn.Module, dict[str, Any], str]:
    """A Hugging Face model from a config; returns (model, kwargs to rebuild it, model_type)."""
    try:
        import transformers
    except ImportError:
        raise NetcompressError("hf: models need the transformers package (pip install transformers)") from None
    kw = dict(kwargs)
    pretrained = bool(kw.pop("pretrained", False))
    task = kw.pop("task", None)
    attn = kw.pop("attn_implementation", None)
    num_classes = kw.pop("num_classes", None)
    in_channels = kw.pop("in_channels", None)
    input_size = kw.pop("input_size", None)
    fields = kw.pop("config", None) or {}
    if not isinstance(fields, dict):
        raise NetcompressError(f"hf:{name}: config must be a dict of config fields, got {type(fields).__name__}")
    fields = {**_strip(fields), **kw}  # remaining keyword arguments are config fields too
    config = _hf_config(name, fields, pretrained)
    if task is None:
        task = "image-classification" if hasattr(config, "image_size") else "sequence-classification"
    if task not in HF_TASKS:
        raise NetcompressError(f"hf:{name}: task {task!r}; valid: {', '.join(HF_TASKS)}")
    if task in _CLASSIFY and num_classes is not None:
        config.num_labels = int(num_classes)
    if in_channels is not None and hasattr(config, "num_channels"):
        config.num_channels = int(in_channels)
    if input_size is not None and hasattr(config, "image_size"):
        config.image_size = int(input_size)
    auto = getattr(transformers, HF_TASKS[task])
    extra = {"attn_implementation": attn} if attn else {}
    if getattr(config, "architectures", ()) is None:
        # transformers iterates it to choose among a task's classes (DeiT, LeViT: with a teacher or not)
        config.architectures = []
    try:
        if pretrained:
            model = auto.from_pretrained(name, config=config, **extra)
        else:
            model = auto.from_config(config, **extra)
    except OSError as e:
        raise NetcompressError(f"hf:{name}?pretrained=true: weights could not be loaded ({str(e).splitlines()[0]}); "
                               "offline, build from a config (pretrained=false) or load a saved model file") from None
    except (ValueError, TypeError, KeyError, AssertionError, IndexError) as e:  # config fields that do not fit together
        raise NetcompressError(f"hf:{name}: {HF_TASKS[task]} cannot build a {config.model_type!r} model: "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    spec_kw: dict[str, Any] = {"task": task, "config": _strip(config.to_diff_dict())}
    spec_kw["config"].pop("id2label", None)  # int keys do not survive JSON; num_labels says it all
    spec_kw["config"].pop("label2id", None)
    if task in _CLASSIFY:
        spec_kw["num_classes"] = int(config.num_labels)
    if attn:
        spec_kw["attn_implementation"] = attn
    return model, spec_kw, config.model_type
