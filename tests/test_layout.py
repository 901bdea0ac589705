"""The library's layering: the demo world is one implementation of the labeler and judge interfaces, imported by
nothing else in rlhf_kit; no import cycles; a reward model trained on a public card never loads the demo."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, TINY, config_args, stage_paths

PACKAGE = REPO / "rlhf_kit"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """rlhf_kit module -> the rlhf_kit modules it imports (at any depth of the file: function-level imports count)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name and t != "rlhf_kit":
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_nothing_outside_the_demo_package_imports_it():
    offenders = {m: sorted(d for d in deps if d.startswith("rlhf_kit.demo"))
                 for m, deps in import_graph().items() if not m.startswith("rlhf_kit.demo")}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_no_import_cycles_in_rlhf_kit():
    assert find_cycle(import_graph()) is None


def test_the_checks_see_a_cycle_and_a_demo_import():
    graph = {"rlhf_kit.a": {"rlhf_kit.b"}, "rlhf_kit.b": {"rlhf_kit.c"}, "rlhf_kit.c": {"rlhf_kit.a"}}
    assert find_cycle(graph) == ["rlhf_kit.a", "rlhf_kit.b", "rlhf_kit.c", "rlhf_kit.a"]
    assert "rlhf_kit.demo.world" in import_graph()["rlhf_kit.demo.gold"]  # function-level imports are seen too


def test_reward_training_on_a_public_card_never_imports_the_demo(pipeline, tmp_path):
    """The reward stage trained on hh-rlhf fixtures in a fresh interpreter where importing rlhf_kit.demo fails."""
    args = config_args("reward") + stage_paths(pipeline, "reward") + TINY["reward"] + [
        "--dataset_cards", "hh_rlhf", "--card_data_dir", str(REPO / "tests" / "fixtures" / "cards"),
        "--ranking_loss", "pairwise", "--eval_dataset_path", "", "--max_steps", "2", "--max_length", "512",
        "--output_dir", str(tmp_path / "reward")]
    script = f"""
import runpy, sys
class NoDemo:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("rlhf_kit.demo"):
            raise ImportError("rlhf_kit.demo imported by the reward stage")
sys.meta_path.insert(0, NoDemo())
sys.argv = [{str(REPO / 'recipes' / 'reward.py')!r}] + {args!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "reward" / "stage_complete.json").read_text())["rows"] > 0


def test_every_subpackage_ships_in_the_wheel():
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {_module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert found - listed == set(), "add these packages to [tool.setuptools] packages in pyproject.toml"
    assert {"rlhf_kit.recipes", "rlhf_kit.data_cards"} <= listed


def test_rlhf_kit_stage_subcommand_runs_the_recipe():
    proc = subprocess.run([sys.executable, "-m", "rlhf_kit.cli", "sft", "--help"], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and "usage: rlhf-kit sft" in proc.stdout
    assert "--dataset_cards" in proc.stdout and "--lora_r" in proc.stdout  # rlhf_kit's, TRL's and peft's options
