"""Recipes: YAML schema, stage kinds and the runner."""
from netcompress.recipe.runner import RunResult, run_recipe
from netcompress.recipe.schema import Recipe, load_recipe
from netcompress.recipe.stages import STAGES, StageContext, StageKind, StageResult

__all__ = ["RunResult", "run_recipe", "Recipe", "load_recipe", "STAGES", "StageContext", "StageKind", "StageResult"]
