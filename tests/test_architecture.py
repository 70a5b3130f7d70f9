"""The shape of the code: imports point one way, and SQL text is written only in the SQL package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "portrait"
# Lower layers never import higher ones (ARCHITECTURE.md).
LAYERS: dict[str, float] = {
    "errors": 0, "model": 0, "config": 0,
    "spec": 1, "identity": 1, "dedup": 1, "demo": 1, "mapping": 1, "attributes": 1, "conditions": 1, "privacy": 1,
    "untrusted": 1, "column_types": 1,
    "sql": 2,
    "store": 3,
    "connectors": 3,
    "background": 3.5, "job_queue": 3.5,
    "writer": 4, "pipeline": 4, "keys": 4, "files": 4, "registry": 4, "sources": 4, "calculated": 4, "audit": 4.1,
    "event_names": 4, "value_notes": 4, "rebuild": 4.1,
    "segments": 4.2, "analytics": 4.3, "subjects": 4.3, "exports": 4.5,
    "backups": 4.1, "import_records": 4.1,
    "service": 5, "client": 5, "import_jobs": 5.1, "export_jobs": 5.1, "viewer": 5.5,
    "api": 6, "cli": 6, "web": 6, "__main__": 7, "__init__": 0,
}
SQL_TEXT = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+TABLE)\b",
                      re.IGNORECASE | re.DOTALL)


def modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def layer_of(path: Path) -> float:
    top = path.relative_to(SRC).parts[0].removesuffix(".py")
    return LAYERS[top]


def portrait_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("portrait"):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names if alias.name.startswith("portrait"))
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_downward(path: Path) -> None:
    own = layer_of(path)
    for module in portrait_imports(path):
        parts = module.split(".")
        if len(parts) < 2:
            continue
        target = LAYERS[parts[1]]
        assert target <= own, f"{path.relative_to(SRC)} (layer {own}) imports {module} (layer {target})"


@pytest.mark.parametrize("path", [p for p in modules() if "sql" not in p.relative_to(SRC).parts[0]
                                  ], ids=lambda p: str(p.relative_to(SRC)))
def test_sql_text_lives_only_in_the_sql_package(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and not _is_docstring(tree, node):
            assert not SQL_TEXT.search(node.value), f"SQL text in {path.name}: {node.value[:80]!r}"


def _is_docstring(tree: ast.Module, node: ast.Constant) -> bool:
    for parent in ast.walk(tree):
        body = getattr(parent, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and body[0].value is node:
            return True
    return False


def test_every_module_is_placed_in_a_layer() -> None:
    assert {p.relative_to(SRC).parts[0].removesuffix(".py") for p in modules()} <= set(LAYERS)
