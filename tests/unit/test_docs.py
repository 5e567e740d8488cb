"""The documentation holds together: the README stays a front page, every relative link of the Markdown files
resolves to a file of the repository and each anchor to a heading of its target, nothing links outside the
repository (the local stack's addresses aside), and the license is there. The checker is proven on planted
faults."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

REPO = Path(__file__).resolve().parents[2]
README_MAX_LINES = 250
CHECKED_MARKDOWN = ("README.md", "CONTRIBUTING.md", "RELIABILITY.md", "CHANGELOG.md", "docs/*.md")
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})

FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(?P<ticks>`+)(?P<code>.+?)(?P=ticks)")
INLINE_LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\(\s*<?(?P<target>[^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
BARE_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s)>\]]+")
HEADING = re.compile(r"^ {0,3}(?P<hashes>#{1,6})\s+(?P<title>.*?)\s*#*\s*$")
NOT_IN_AN_ANCHOR = re.compile(r"[^\w\- ]")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


@dataclass(frozen=True)
class Link:
    source: Path
    line_number: int
    target: str

    def where(self, root: Path) -> str:
        return f"{self.source.relative_to(root)}:{self.line_number}: {self.target}"


def checked_markdown_files(root: Path) -> list[Path]:
    return sorted({path for pattern in CHECKED_MARKDOWN for path in root.glob(pattern) if path.is_file()})


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """The lines outside fenced code blocks, numbered from 1."""
    open_fence = ""
    for line_number, line in enumerate(text.splitlines(), start=1):
        fence = FENCE.match(line)
        if fence and not open_fence:
            open_fence = fence["fence"]
        elif fence and fence["fence"][0] == open_fence[0] and len(fence["fence"]) >= len(open_fence):
            open_fence = ""
        elif not open_fence:
            yield line_number, line


def links_in(path: Path) -> list[Link]:
    links = []
    for line_number, line_with_code in prose_lines(path.read_text(encoding="utf-8")):
        line = CODE_SPAN.sub("code", line_with_code)
        inline_targets = [match["target"] for match in INLINE_LINK.finditer(line)]
        bare_urls = [match.group(0) for match in BARE_URL.finditer(INLINE_LINK.sub("", line))]
        links += [Link(path, line_number, target) for target in (*inline_targets, *bare_urls)]
    return links


def github_anchor(heading_title: str) -> str:
    """GitHub's anchor of a heading: its text lowercased, punctuation but `-` and `_` dropped, spaces to `-`."""
    text = INLINE_LINK.sub(lambda match: match["text"], heading_title)
    return NOT_IN_AN_ANCHOR.sub("", text.strip().lower()).replace(" ", "-")


def heading_anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    times_seen: dict[str, int] = {}
    text = path.read_text(encoding="utf-8")
    titles = [heading["title"] for _, line in prose_lines(text) if (heading := HEADING.match(line))]
    for title in titles:
        anchor = github_anchor(CODE_SPAN.sub(lambda match: match["code"], title))
        seen = times_seen.get(anchor, 0)
        anchors.add(anchor if seen == 0 else f"{anchor}-{seen}")
        times_seen[anchor] = seen + 1
    return anchors


def link_problem(link: Link, root: Path) -> str | None:
    """What is wrong with one link, or None when it resolves inside the repository."""
    if SCHEME.match(link.target):
        parts = urlsplit(link.target)
        if parts.scheme in {"http", "https"} and parts.hostname in LOCAL_HOSTS:
            return None
        return "points outside the repository"
    path_part, _, anchor = link.target.partition("#")
    if not path_part and not anchor:
        return "is empty"
    target = (link.source.parent / unquote(path_part)).resolve() if path_part else link.source
    if not target.is_relative_to(root.resolve()):
        return "leaves the repository"
    if not target.exists():
        return "names no file"
    if anchor and target.suffix == ".md" and unquote(anchor) not in heading_anchors(target):
        return f"names no heading of {target.relative_to(root.resolve())}"
    return None


def link_problems(root: Path) -> list[str]:
    problems = []
    for path in checked_markdown_files(root):
        for link in links_in(path):
            if (problem := link_problem(link, root)) is not None:
                problems.append(f"{link.where(root)} {problem}")
    return problems


def test_the_readme_is_a_front_page() -> None:
    line_count = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert line_count <= README_MAX_LINES, f"README.md has {line_count} lines; move a section to docs/"


def test_every_link_resolves_inside_the_repository() -> None:
    checked = [path.relative_to(REPO).as_posix() for path in checked_markdown_files(REPO)]
    assert {"README.md", "CONTRIBUTING.md", "RELIABILITY.md"} <= set(checked)
    assert any(name.startswith("docs/") for name in checked)
    assert link_problems(REPO) == []


def test_the_license_is_the_apache_license() -> None:
    license_text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert license_text.lstrip().startswith("Apache License")
    assert "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text


def test_the_link_check_finds_planted_faults(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (tmp_path / "outside.md").write_text("# Outside\n")
    (repo / "docs" / "guide.md").write_text("# The guide\n\n## The `train` step, in short\n\n## Steps\n\n## Steps\n")
    (repo / "README.md").write_text(
        "# Project\n\n"
        "[good](docs/guide.md#the-train-step-in-short) [second steps](docs/guide.md#steps-1) [here](#project)\n"
        "[missing](docs/missing.md) [bad anchor](docs/guide.md#no-such-heading)\n"
        "[outside](../outside.md) [website](https://example.invalid/page) the stack: http://127.0.0.1:8080\n"
        "`[in code](docs/missing.md)`\n\n"
        "```\n[in a block](docs/missing.md) https://example.invalid/in-a-block\n```\n"
    )
    assert link_problems(repo) == [
        "README.md:4: docs/missing.md names no file",
        "README.md:4: docs/guide.md#no-such-heading names no heading of docs/guide.md",
        "README.md:5: ../outside.md leaves the repository",
        "README.md:5: https://example.invalid/page points outside the repository",
    ]
