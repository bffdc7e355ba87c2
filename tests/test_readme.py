"""Every ```python block of README.md runs as written.

Blocks run in order, in one temporary working directory (the files one block writes, such as
``pruned-smollm2``, are there for the next). Each block gets a fresh namespace, unless it uses
names it does not define itself: then it continues the namespace of the latest earlier block
that defines them, as a reader who pastes the blocks into one session would. The blocks load
the bundled SmolLM2, so they are slow; ``cortexmap.load_model("smollm2-135m")`` returns the
session's ``smollm2`` handle, as the other bundled-model tests share it.
"""

from __future__ import annotations

import ast
import builtins
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    """One ```python block: its first code line in README.md, its source, the free names it uses."""

    line: int
    code: str
    free: frozenset[str] = field(default=frozenset())


def _free_names(code: str) -> frozenset[str]:
    """Names a block reads without binding them anywhere in the block (builtins excluded)."""
    tree = ast.parse(code)
    bound: set[str] = set()
    read: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return frozenset(read - bound - set(dir(builtins)))


def readme_blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown text, in order."""
    return [Block(text.count("\n", 0, m.start(1)) + 1, m.group(1), _free_names(m.group(1)))
            for m in _BLOCK.finditer(text)]


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks_and_the_dependency_rule_sees_them():
    assert len(BLOCKS) >= 3
    assert BLOCKS[0].free == frozenset()  # the first block stands alone
    assert _free_names("import x\ny = x.f(z)\nfor i in y: print(i)") == {"z"}


@pytest.fixture(scope="module")
def readme_state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The working directory and the namespaces of the blocks run so far (by first line)."""
    return {"cwd": tmp_path_factory.mktemp("readme"), "namespaces": {}}


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{b.line}" for b in BLOCKS])
def test_readme_block_runs_as_written(block: Block, readme_state: dict[str, Any], smollm2: Any,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import cortexmap

    real_load = cortexmap.load_model

    def load_model(spec: str, *args: Any, **kwargs: Any) -> Any:
        return smollm2 if spec == "smollm2-135m" and not args and not kwargs else real_load(spec, *args, **kwargs)

    monkeypatch.setattr(cortexmap, "load_model", load_model)
    monkeypatch.chdir(readme_state["cwd"])
    namespaces = readme_state["namespaces"]
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    if block.free:
        owners = [line for line, names in namespaces.items() if line < block.line and block.free <= names.keys()]
        if not owners:
            pytest.fail(f"README.md:{block.line} uses {sorted(block.free)}, which no earlier block that ran defines")
        namespace = namespaces[max(owners)]
    # Padded to the block's place in the file, so a traceback shows README.md's own lines.
    code = compile("\n" * (block.line - 1) + block.code, str(README), "exec")
    exec(code, namespace)  # noqa: S102 - the README's own code, which is what is tested
    namespaces[block.line] = namespace
