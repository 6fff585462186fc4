"""Model zoo, `create(name)`, and pickle-free save / load of (possibly transformed) models."""
from netcompress.models.zoo import MODELS, create, create_for, list_models
from netcompress.models.io import describe, save, load, build, MODULE_TYPES, register_module_type

__all__ = ["MODELS", "create", "create_for", "list_models", "describe", "save", "load", "build", "MODULE_TYPES", "register_module_type"]
