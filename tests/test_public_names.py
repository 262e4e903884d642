"""`from cnn_gpu.nn import *` and `from cnn_gpu.functional import *` give every public name the
packages import from their modules: __all__ lists each (merges of parallel work dropped 73 of them
once), and every listed name exists."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest


@pytest.mark.parametrize("package", ["cnn_gpu.nn", "cnn_gpu.functional"])
def test_all_lists_every_imported_public_name(package):
    module = importlib.import_module(package)
    tree = ast.parse(Path(module.__file__).read_text())
    imported = {alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom) and node.level
                for alias in node.names}
    public = {name for name in imported if not name.startswith("_")}
    assert not public - set(module.__all__), sorted(public - set(module.__all__))
    assert all(hasattr(module, name) for name in module.__all__)
    star = {}
    exec(f"from {package} import *", star)
    assert public <= set(star)
