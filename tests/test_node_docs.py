"""The in-UI help pages (web/docs/<NodeId>.md, shown by the frontend's node help) are generated from
the node sections of docs/nodes.md, and those sections cover every node and every input of its schema.

Regenerate the pages after editing docs/nodes.md:  python tests/test_node_docs.py --write
"""

from __future__ import annotations

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from comfy_pack import PACK_ROOT, node_classes  # noqa: E402

DOC = os.path.join(PACK_ROOT, "docs", "nodes.md")
WEB_DOCS = os.path.join(PACK_ROOT, "web", "docs")
HEADING = re.compile(r"^### (?P<title>.+?) \(`(?P<id>R2R\w+)`\)\s*$")
FOOTER = ("\n---\nFrom the R2R node guide (docs/nodes.md in the pack): masks, where the weights go, the "
          "templates, memory and every error message.\n")


def node_sections(text: str) -> dict[str, tuple[str, str]]:
    """{node id: (title, body)} for every '### Title (`Id`)' section of docs/nodes.md."""
    sections, current, lines = {}, None, []
    for line in text.splitlines() + ["## end"]:
        m = HEADING.match(line)
        if current is not None and (m or line.startswith("## ") or line.startswith("### ")):
            sections[current[0]] = (current[1], "\n".join(lines).strip())
            current = None
        if m:
            current, lines = (m["id"], m["title"]), []
        elif current is not None:
            lines.append(line)
    return sections


def render_pages() -> dict[str, str]:
    with open(DOC, encoding="utf-8") as f:
        sections = node_sections(f.read())
    return {node_id: f"# {title}\n\n{body}\n{FOOTER}" for node_id, (title, body) in sections.items()}


def write_pages() -> None:
    os.makedirs(WEB_DOCS, exist_ok=True)
    pages = render_pages()
    for fn in os.listdir(WEB_DOCS):
        if fn.endswith(".md") and fn[:-3] not in pages:
            os.remove(os.path.join(WEB_DOCS, fn))
    for node_id, page in pages.items():
        with open(os.path.join(WEB_DOCS, node_id + ".md"), "w", encoding="utf-8") as f:
            f.write(page)


def test_every_node_and_input_is_documented():
    with open(DOC, encoding="utf-8") as f:
        sections = node_sections(f.read())
    for node_id, cls in node_classes().items():
        assert node_id in sections, f"docs/nodes.md has no '### ... (`{node_id}`)' section"
        title, body = sections[node_id]
        info = cls.GET_NODE_INFO_V1()
        assert title == info["display_name"], f"{node_id}: heading {title!r} != display name {info['display_name']!r}"
        for section in ("required", "optional"):
            for name in info["input_order"].get(section, []):
                assert f"`{name}`" in body, f"docs/nodes.md section of {node_id} does not mention input `{name}`"


def test_help_pages_match_docs():
    pages = render_pages()
    have = {fn[:-3] for fn in os.listdir(WEB_DOCS) if fn.endswith(".md")} if os.path.isdir(WEB_DOCS) else set()
    assert have == set(pages), "web/docs differs from docs/nodes.md: run python tests/test_node_docs.py --write"
    for node_id, page in pages.items():
        with open(os.path.join(WEB_DOCS, node_id + ".md"), encoding="utf-8") as f:
            assert f.read() == page, f"web/docs/{node_id}.md is stale: run python tests/test_node_docs.py --write"


def test_pack_serves_the_help_pages():
    """The frontend fetches /extensions/<pack folder>/docs/<NodeId>.md: the pack's WEB_DIRECTORY is web/."""
    with open(os.path.join(PACK_ROOT, "__init__.py"), encoding="utf-8") as f:
        assert re.search(r'^WEB_DIRECTORY = "\./web"$', f.read(), re.M)


if __name__ == "__main__" and "--write" in sys.argv:
    write_pages()
    print(f"wrote {len(render_pages())} pages to {WEB_DOCS}")
