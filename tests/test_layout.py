"""The package layout's rules, read from the source (every import, top-level or inside functions):
- `models/` never imports ComfyUI;
- no import cycles between modules;
- the model packages are layered: core <- svd / sd15 <- papers <- pipelines (a paper never imports the
  pipeline layer; the SVD base knows no paper);
- the body, pose and render stages never import the synthetic-data generator;
- a node module never imports another node module's private names (leading underscore)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMFY_MODULES = {"comfy", "folder_paths", "nodes", "server", "execution", "latent_preview", "comfy_extras"}
# package -> packages it may import (besides itself, errors and the leaf utilities)
LAYERS = {
    "core": set(),
    "svd": {"core"},
    "sd15": {"core"},
    "mimicmotion": {"core"},
    "stableanimator": {"core", "svd"},
    "dispose": {"core", "svd", "sd15", "pose"},
    "pipelines": {"core", "svd", "sd15", "mimicmotion", "stableanimator", "dispose", "vividpose"},
    "champ": {"core", "sd15"},
    "animate_anyone": {"core", "sd15"},
    "vividpose": {"core", "svd", "sd15"},
    "evaluation": {"core"},
    "training": {"core", "svd", "vividpose", "pipelines", "pose", "body", "render", "evaluation", "stableanimator"},
}
CHECKED = set(LAYERS) | {"pose", "body", "render", "synthetic"}  # a package outside LAYERS' values is refused
NO_SYNTHETIC = ("body", "pose", "render", "vision")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module within the pack or external top-level name, imported names, level) per import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if node.level == 0:
                found.append((node.module or "", names, 0))
                continue
            base = package[:len(package) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            if node.module is None:  # `from . import x`: x is a module
                found += [(f"{target}.{name}", [], node.level) for name in names]
            else:
                found.append((target, names, node.level))
    return found


def _sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_the_library_never_imports_comfyui():
    offenders = [f"{path.relative_to(ROOT)}: {module}" for path in _sources("models")
                 for module, _, level in _imports(path) if level == 0 and module.split(".")[0] in COMFY_MODULES]
    assert not offenders, offenders


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for folder in ("models", "nodes") for p in _sources(folder)}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for target, names, level in _imports(path):
            if level == 0:
                continue
            for candidate in [f"{target}.{n}" for n in names] + [target]:
                if candidate in modules and candidate != name:
                    edges.add(candidate)
                    break
        graph[name] = edges
    return graph


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_model_packages_are_layered():
    offenders = []
    for package, allowed in LAYERS.items():
        for path in _sources(f"models/{package}"):
            for target, _, level in _imports(path):
                parts = target.split(".")
                if level == 0 or len(parts) < 2 or parts[0] != "models":
                    continue
                used = parts[1]
                if used not in (package, "errors") and used in CHECKED and used not in allowed:
                    offenders.append(f"{path.relative_to(ROOT)} imports models.{used}")
    assert not offenders, offenders


def test_body_pose_and_render_stages_do_not_import_the_synthetic_generator():
    offenders = [f"{path.relative_to(ROOT)}: {target}" for stage in NO_SYNTHETIC
                 for path in _sources(f"models/{stage}")
                 for target, _, level in _imports(path) if level and target.startswith("models.synthetic")]
    assert not offenders, offenders


def test_nodes_do_not_import_each_others_private_names():
    node_modules = {_module_name(p) for p in _sources("nodes")}
    offenders = []
    for path in _sources("nodes"):
        for target, names, level in _imports(path):
            if level and target in node_modules and target != _module_name(path):
                private = [n for n in names if n.startswith("_")]
                if private:
                    offenders.append(f"{path.relative_to(ROOT)} imports {private} from {target}")
    assert not offenders, offenders


def test_each_paper_has_its_own_package():
    packages = {p.name for p in (ROOT / "models").iterdir() if (p / "__init__.py").is_file()}
    assert {"core", "svd", "mimicmotion", "stableanimator", "dispose", "sd15", "pipelines"} <= packages
