"""Recipes: YAML schema, stage kinds, the runner, and `apply` (one stage kind from Python)."""
from netcompress.recipe.runner import RunResult, run_recipe
from netcompress.recipe.schema import Recipe, load_recipe
from netcompress.recipe.stages import STAGES, StageContext, StageKind, StageResult, apply

__all__ = ["RunResult", "run_recipe", "Recipe", "load_recipe", "STAGES", "StageContext", "StageKind", "StageResult",
           "apply"]
