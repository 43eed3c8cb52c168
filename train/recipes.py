"""Training recipes: a name, a data loader and a model builder, kept in a registry.

A recipe's data comes from packages installed with kdeploy (scikit-learn's bundled data sets), so nothing is
downloaded at run time. To add a recipe, register a `Recipe` in a registry you pass to `train`, or publish it
under the `kdeploy.recipes` entry-point group of your own package; the command line finds it by name.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kdeploy.common.errors import UsageError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "kdeploy.recipes"


@dataclass(frozen=True)
class Dataset:
    """Inputs and labels of a whole data set, before the train/validation split."""

    x: np.ndarray
    y: np.ndarray
    description: str


@dataclass(frozen=True)
class Recipe:
    """How to get data and build, compile and fit a model for one task."""

    name: str
    description: str
    load_data: Callable[[], Dataset]
    """The recipe's bundled data set."""
    build_model: Callable[[np.ndarray, np.ndarray], Any]
    """Builds and compiles a fresh Keras model from the training inputs and labels (adapt layers on them)."""
    prepare: Callable[[np.ndarray], np.ndarray]
    """Turns a data file's raw `x` into the model's input layout (adds a channel axis, casts)."""
    epochs: int
    batch_size: int
    target_metric: str = "accuracy"


class RecipeRegistry:
    """Recipes by name."""

    def __init__(self, recipes: Iterable[Recipe] = ()) -> None:
        self._recipes: dict[str, Recipe] = {}
        for recipe in recipes:
            self.register(recipe)

    def register(self, recipe: Recipe) -> None:
        if recipe.name in self._recipes:
            raise ValueError(f"recipe {recipe.name!r} is registered twice")
        self._recipes[recipe.name] = recipe

    def names(self) -> list[str]:
        return sorted(self._recipes)

    def get(self, name: str) -> Recipe:
        """The recipe called `name`.

        Raises:
            UsageError: for an unknown name, listing the known ones.
        """
        try:
            return self._recipes[name]
        except KeyError:
            raise UsageError(f"unknown recipe {name!r}; choose from {', '.join(self.names())}") from None


def default_registry() -> RecipeRegistry:
    """The built-in recipes plus any published under the `kdeploy.recipes` entry-point group."""
    from kdeploy.train.builtin_recipes import BUILTIN_RECIPES

    registry = RecipeRegistry(BUILTIN_RECIPES)
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            registry.register(entry_point.load())
        except Exception:  # a broken plug-in must not break the built-in recipes
            logger.warning("cannot load recipe plug-in %s", entry_point.value, exc_info=True)
    return registry
