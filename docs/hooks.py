"""mkdocs hooks: keep one source for every page and generate the pages that list things.

- ``<!-- include: PATH -->`` (PATH relative to the repository root) is replaced by that file's Markdown. The home
  page includes ``README.md``, the results page ``benchmarks/RESULTS.md``, the changelog page ``CHANGELOG.md``:
  those files stay the only copy, and the site is rebuilt from them.
- Relative links are rewritten for the site on every page (included or not): a link to a file in ``docs/`` points
  to that page, links to ``README.md`` / ``benchmarks/RESULTS.md`` / ``CHANGELOG.md`` point to the pages that
  include them, and a link to any other repository file (a script, a folder) becomes plain code text, since the
  site does not contain it. A plot named in the text as ``docs/img/NAME.png`` becomes a link to the image.
- ``<!-- autoopt:recipes -->`` becomes one section per recipe shipped in ``lightning_autoopt/recipes/`` (from
  :func:`lightning_autoopt.recipes.list_recipes`): description, command, and the YAML file itself.
- ``<!-- autoopt:plots -->`` becomes a gallery of every PNG in ``docs/img/``.
- In the API pages, Sphinx roles left in docstrings (``:class:`~a.b.C```) are shown as code (``C``) and a
  paragraph ``Example::`` (reST's literal-block marker) as a bold ``Example:`` above its code block.
"""

from __future__ import annotations

import posixpath
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Repository files that are pages of the site under another name.
_PAGE_FOR = {"README.md": "index.md", "benchmarks/RESULTS.md": "results.md", "CHANGELOG.md": "changelog.md"}

_INCLUDE = re.compile(r"^<!-- include: (?P<path>\S+) -->\s*$", re.MULTILINE)
_LINK = re.compile(r"(?P<bang>!?)\[(?P<text>[^\]\n]*)\]\((?P<target>[^)\s]+)(?P<title>\s+\"[^\"]*\")?\)")
_PLOT_MENTION = re.compile(r"(?<!\[)`docs/img/(?P<name>[\w.-]+\.png)`")
_FENCE = re.compile(r"^(```|~~~)", re.MULTILINE)
_RST_LITERAL_INTRO = re.compile(r"<p>(?P<title>[^<>]{1,80})::</p>")
_ROLE_HTML = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj|ref|py:\w+):<code>~?(?P<target>[^<]+)</code>")


def _outside_fences(markdown: str, fn: Any) -> str:
    """Apply ``fn`` to the text outside fenced code blocks only."""
    parts = re.split(r"(^(?:```|~~~).*?^(?:```|~~~)[^\n]*$)", markdown, flags=re.MULTILINE | re.DOTALL)
    return "".join(part if _FENCE.match(part) else fn(part) for part in parts)


def _rewrite_links(markdown: str, source_dir: str, page_dir: str) -> str:
    """Rewrite the relative links of Markdown written in ``source_dir`` for a page in ``page_dir`` (repo paths)."""

    def link(match: re.Match[str]) -> str:
        target = match["target"]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return match[0]  # URL, anchor or absolute: leave it
        path, _, anchor = target.partition("#")
        repo_path = posixpath.normpath(posixpath.join(source_dir, path))
        if repo_path in _PAGE_FOR:
            repo_path = "docs/" + _PAGE_FOR[repo_path]
        if not repo_path.startswith("docs/"):
            # Not part of the site (a script, a folder, a file outside docs/): keep the words, drop the link.
            return match[0] if match["bang"] else f"`{match['text'].strip('`')}`"
        new = posixpath.relpath(repo_path, page_dir) + (f"#{anchor}" if anchor else "")
        return f"{match['bang']}[{match['text']}]({new}{match['title'] or ''})"

    def plot(match: re.Match[str]) -> str:
        image = posixpath.relpath(f"docs/img/{match['name']}", page_dir)
        return f"[`docs/img/{match['name']}`]({image})"

    return _outside_fences(markdown, lambda text: _PLOT_MENTION.sub(plot, _LINK.sub(link, text)))


def _include(match: re.Match[str], page_dir: str) -> str:
    rel = match["path"]
    text = (ROOT / rel).read_text(encoding="utf-8")
    return _rewrite_links(text, posixpath.dirname(rel), page_dir)


def _recipes_markdown() -> str:
    sys.path.insert(0, str(ROOT))
    try:
        from lightning_autoopt.recipes import list_recipes, recipe_description, recipe_path
    finally:
        sys.path.remove(str(ROOT))
    blocks = []
    for name in list_recipes():
        yaml_text = recipe_path(name).read_text(encoding="utf-8").rstrip()
        blocks.append(
            f"## `{name}`\n\n{recipe_description(name)}.\n\n"
            f"```bash\nautoopt fit --config recipe:{name}\n```\n\n"
            f'```yaml title="lightning_autoopt/recipes/{name}.yaml"\n{yaml_text}\n```\n'
        )
    return "\n".join(blocks)


def _plots_markdown(page_dir: str) -> str:
    blocks = []
    for png in sorted((DOCS / "img").glob("*.png")):
        title = png.stem.replace("_", " ")
        src = posixpath.relpath(f"docs/img/{png.name}", page_dir)
        blocks.append(f"## {title}\n\n`docs/img/{png.name}`\n\n![{title}]({src})\n")
    return "\n".join(blocks)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Expand includes and generated sections, then rewrite relative links for the site."""
    page_dir = posixpath.dirname("docs/" + page.file.src_uri)
    markdown = _INCLUDE.sub(lambda m: _include(m, page_dir), markdown)
    markdown = markdown.replace("<!-- autoopt:recipes -->", _recipes_markdown())
    markdown = markdown.replace("<!-- autoopt:plots -->", _plots_markdown(page_dir))
    return _rewrite_links(markdown, page_dir, page_dir)


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """Show Sphinx roles left in docstrings as code with the short name; ``Example::`` as a bold label."""

    def role(match: re.Match[str]) -> str:
        target = match["target"]
        short = target.rsplit(".", 1)[-1] if match[0].split("<code>", 1)[1].startswith("~") else target
        return f"<code>{short}</code>"

    html = _ROLE_HTML.sub(role, html)
    # "Example::" (reST's marker for the literal block that follows) reads as a heading for the code below.
    return _RST_LITERAL_INTRO.sub(lambda m: f"<p><strong>{m['title']}:</strong></p>", html)
