"""Where the files that ship with rlhf_kit live: the recipes (scripts, demo and model configs, accelerate configs)
and the data cards.

In the repository they sit at the top level (``recipes/``, ``data_cards/``), where people read and launch them;
pyproject.toml maps them into the installed package as ``rlhf_kit/recipes`` and ``rlhf_kit/data_cards``, so
``pip install rlhf_kit`` followed by ``rlhf-kit demo`` works in an empty folder.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # rlhf_kit/, this file being rlhf_kit/core/paths.py


def shipped(name: str) -> Path:
    """The shipped folder ``name`` (``recipes`` or ``data_cards``): inside the installed package, else in the
    repository checkout this package was imported from."""
    inside = _PACKAGE / name
    return inside if inside.is_dir() else _PACKAGE.parent / name


def recipe_path(stage: str) -> Path:
    """The recipe script of a stage, e.g. ``recipes/sft.py``."""
    return shipped("recipes") / f"{stage}.py"


def demo_config(stage: str) -> Path:
    """The demo world's config of a stage, e.g. ``recipes/configs/demo/sft.yaml``."""
    return shipped("recipes") / "configs" / "demo" / f"{stage}.yaml"
