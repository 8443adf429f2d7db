"""The one list of our node ids: the keys of NODE_CLASS_MAPPINGS in nodes/__init__.py.

Read from the source (the module imports ComfyUI), so tests can name our nodes before a host runs;
tests/test_host_combos.py checks that the host registers exactly these.
"""
from __future__ import annotations

import ast

from . import ROOT


def pack_node_ids() -> tuple[str, ...]:
    tree = ast.parse((ROOT / "nodes" / "__init__.py").read_text(encoding="utf-8"))
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "NODE_CLASS_MAPPINGS" for t in statement.targets):
            return tuple(ast.literal_eval(key) for key in statement.value.keys)
    raise LookupError("nodes/__init__.py defines no NODE_CLASS_MAPPINGS dict")
