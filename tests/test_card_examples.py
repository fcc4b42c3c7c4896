"""The "Using it with your own module" example of every method card runs as written (extracted from the Markdown).

Every ```python block of that section runs, in order, in one fresh module (so ``__name__``-based class paths work,
as in a script), from an empty folder.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs" / "methods"
HEADING = "## Using it with your own module"
CARDS = ["sharpness", "lpf_sgd", "dco", "task_shift", "tame"]


def own_module_code(card: str) -> str:
    text = (DOCS / f"{card}.md").read_text()
    assert HEADING in text, f"docs/methods/{card}.md has no '{HEADING}' section"
    start = text.index(HEADING)
    end = text.find("\n## ", start + len(HEADING))
    blocks = re.findall(r"```python\n(.*?)```", text[start : None if end == -1 else end], re.S)
    assert blocks, f"the '{HEADING}' section of {card}.md has no python example"
    return "\n".join(blocks)


@pytest.mark.parametrize("card", CARDS)
def test_own_module_example_runs(card, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = f"card_example_{card}"
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    code = compile(own_module_code(card), str(DOCS / f"{card}.md"), "exec")
    exec(code, module.__dict__)  # noqa: S102 -- running the documented example is the point
