"""The documentation's relative links resolve: README.md, docs/*.md and datasets/README.md.

Every markdown link or image (``[text](path)``, ``![alt](path)``, ``[text][ref]`` with its
``[ref]: path`` definition) whose target is not a URL must name an existing file or folder of the
repository, and a ``#anchor`` (alone, or after a path to a markdown file) a heading of that file, by
GitHub's rule for heading anchors. Code (fenced blocks and inline spans) is not read for links. No
network: URLs (``http:``, ``https:``, ``mailto:``) are not checked.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted({ROOT / "README.md", ROOT / "datasets" / "README.md", *DOCS.rglob("*.md")})
README_MAX_LINES = 200

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target); the text may hold one level of brackets (an image in a link).
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s)]*)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)"
)
_REF_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\[([^\]]+)\]")
_REF_DEF = re.compile(r"^ {0,3}\[([^\]]+)\]:\s*(\S+)")
_ATX = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text: str, blank_code: bool = True) -> list[tuple[int, str]]:
    """(line number, line) of ``text`` outside fenced code blocks, inline code spans blanked (unless
    ``blank_code`` is False: a heading's anchor is made from its code too)."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            continue
        if fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = None
            continue
        out.append((number, _INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line) if blank_code else line))
    return out


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text without markup, lower case, every character other
    than a letter, mark, digit, underscore, space or hyphen dropped, spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    kept = [c for c in text.lower() if c in " -" or unicodedata.category(c)[0] in "LMN" or c == "_"]
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a markdown file (see anchors_of)."""
    return anchors_of(path.read_text(encoding="utf-8"))


def anchors_of(text: str) -> set[str]:
    """Every anchor of markdown ``text``: its headings' slugs (repeats numbered -1, -2, ... as GitHub
    does) and explicit ``<a name=...>`` / ``<a id=...>``."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(text, blank_code=False):
        found.update(_HTML_ANCHOR.findall(line))
        match = _ATX.match(line)
        if match:
            slug = github_slug(match.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link and image of a markdown file (see links_of)."""
    return links_of(path.read_text(encoding="utf-8"))


def links_of(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every link and image of markdown ``text``, as written."""
    lines = prose_lines(text)
    definitions = {}
    for _, line in lines:
        match = _REF_DEF.match(line)
        if match:
            definitions[match.group(1).lower()] = match.group(2)
    out = []
    for number, line in lines:
        if _REF_DEF.match(line):
            out.append((number, _REF_DEF.match(line).group(2)))
            continue
        for match in _INLINE_LINK.finditer(line):
            out.append((number, match.group(1).strip("<>")))
        for match in _REF_LINK.finditer(line):
            target = definitions.get(match.group(1).lower())
            out.append((number, target if target is not None else f"[undefined reference: {match.group(1)}]"))
    return out


def broken_link(page: Path, target: str) -> str | None:
    """Why ``target`` (a link in ``page``) does not resolve, or None where it does."""
    if target.startswith("[undefined reference"):
        return target
    if _URL.match(target):
        return None
    file_part, _, anchor = target.partition("#")
    file_part = unquote(file_part)
    if not file_part and not anchor:
        return "empty link"
    destination = (page.parent / file_part).resolve() if file_part else page
    if not destination.is_relative_to(ROOT):
        return f"{file_part} leaves the repository"
    if not destination.exists():
        return f"no file {destination.relative_to(ROOT)}"
    if anchor:
        if destination.is_dir() or destination.suffix.lower() != ".md":
            return f"anchor #{anchor} on {destination.relative_to(ROOT)}, which is not a markdown file"
        if unquote(anchor) not in anchors(destination):
            return f"no heading #{anchor} in {destination.relative_to(ROOT)}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    problems = [
        f"{page.relative_to(ROOT)}:{number}: ({target}) {why}"
        for number, target in links(page)
        if (why := broken_link(page, target)) is not None
    ]
    assert not problems, "\n".join(problems)


def test_every_docs_page_is_in_the_index():
    """docs/README.md lists every page of docs/, so none is reachable only by guessing its name."""
    index = DOCS / "README.md"
    listed = {(index.parent / unquote(t.partition("#")[0])).resolve() for _, t in links(index)}
    pages = {p.resolve() for p in DOCS.rglob("*.md")} - {index.resolve()}
    assert not pages - listed, sorted(str(p.relative_to(ROOT)) for p in pages - listed)


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the rest belongs in docs/"


def test_the_checker_itself():
    """What the rules above mean on small cases (GitHub's anchors, code skipped, references)."""
    assert github_slug("`make demo`") == "make-demo"
    assert github_slug("Point loss vs Detectron2's mask loss") == "point-loss-vs-detectron2s-mask-loss"
    assert github_slug("The P_N simulator") == "the-p_n-simulator"
    assert github_slug("Figure 3: the number of points") == "figure-3-the-number-of-points"
    assert github_slug("How `make` installs detectron2") == "how-make-installs-detectron2"
    assert github_slug("§3.3.1 label noise — random") == "331-label-noise--random"
    text = "\n".join(
        [
            "# A title",
            "## A title",
            "### `code` in a heading",
            "see [here](#a-title-1) and `[not](a-link.md)` and ![pic](x.png 'alt')",
            "```",
            "[inside](code.md)",
            "```",
            "[ref link][r] and [url](https://example.com/a#b)",
            "[r]: other.md#x",
        ]
    )
    lines = prose_lines(text)
    assert [n for n, _ in lines] == [1, 2, 3, 4, 8, 9]
    assert "a-link.md" not in lines[3][1]
    assert anchors_of(text) == {"a-title", "a-title-1", "code-in-a-heading"}
    assert links_of(text) == [
        (4, "#a-title-1"),
        (4, "x.png"),
        (8, "https://example.com/a#b"),
        (8, "other.md#x"),
        (9, "other.md#x"),
    ]
    page = DOCS / "_checker_example.md"
    assert broken_link(page, "https://example.com/a#b") is None
    assert broken_link(page, "README.md") is None
    assert broken_link(page, "no_such_page.md") == "no file docs/no_such_page.md"
    assert broken_link(page, "../../outside.md") == "../../outside.md leaves the repository"
    assert broken_link(page, "README.md#no-such-heading") == "no heading #no-such-heading in docs/README.md"
