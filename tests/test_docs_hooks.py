"""The mkdocs hooks (docs/hooks.py): includes keep one source, links are rewritten for the site, lists generated."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ROOT / "docs" / "hooks.py"
pytestmark = pytest.mark.skipif(not HOOKS.is_file(), reason="needs the source tree (docs/hooks.py)")


def _hooks():
    spec = importlib.util.spec_from_file_location("autoopt_docs_hooks", HOOKS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _page(src_uri: str) -> SimpleNamespace:
    return SimpleNamespace(file=SimpleNamespace(src_uri=src_uri))


def test_links_are_rewritten_for_the_page_location():
    hooks = _hooks()
    md = (
        "[card](docs/methods/lsgd.md) [res](benchmarks/RESULTS.md#supported-versions) [script](benchmarks/lpf_sgd.py) "
        "[web](https://example.org/x.md) [top](#anchor) see `docs/img/lpf_sgd_sharpness.png`\n"
        "```python\nx = [a](b.py)\n```\n"
    )
    out = hooks._rewrite_links(md, source_dir="", page_dir="docs/methods")
    assert "[card](lsgd.md)" in out
    assert "[res](../results.md#supported-versions)" in out
    assert "`script`" in out and "lpf_sgd.py" not in out  # not on the site: the words stay, the link goes
    assert "[web](https://example.org/x.md)" in out and "[top](#anchor)" in out
    assert "[`docs/img/lpf_sgd_sharpness.png`](../img/lpf_sgd_sharpness.png)" in out
    assert "x = [a](b.py)" in out  # code blocks are left alone
    assert hooks._rewrite_links(out, "docs/methods", "docs/methods") == out  # idempotent


def test_include_keeps_one_source_and_fixes_its_links():
    hooks = _hooks()
    out = hooks.on_page_markdown("<!-- include: README.md -->\n", _page("index.md"), None, None)
    readme = (ROOT / "README.md").read_text()
    assert out.splitlines()[0] == readme.splitlines()[0]
    assert "(methods/autodrop.md)" in out and "(docs/methods/autodrop.md)" not in out
    assert "(results.md)" in out and "(changelog.md)" in out


def test_recipes_page_lists_every_recipe_with_its_yaml():
    from lightning_autoopt.recipes import list_recipes, recipe_path

    hooks = _hooks()
    out = hooks.on_page_markdown("# Recipes\n\n<!-- autoopt:recipes -->\n", _page("recipes.md"), None, None)
    for name in list_recipes():
        assert f"## `{name}`" in out and f"autoopt fit --config recipe:{name}" in out
        assert recipe_path(name).read_text().rstrip() in out


def test_api_html_shows_sphinx_roles_as_code_and_example_labels():
    hooks = _hooks()
    html = "<p>See :class:<code>~lightning_autoopt.callbacks.AutoDrop</code> and :func:<code>a.b</code>.</p>"
    html += "<p>Example::</p>"
    out = hooks.on_page_content(html, _page("api/callbacks.md"), None, None)
    assert out == "<p>See <code>AutoDrop</code> and <code>a.b</code>.</p><p><strong>Example:</strong></p>"
