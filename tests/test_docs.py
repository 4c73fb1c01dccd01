"""The documentation's links and cited figures point at what exists.

- Every relative markdown link in README.md, DEVELOPERS.md and docs/*.md names an existing
  file, and its `#anchor` (if any) a heading of that file (GitHub's heading ids).
- Every `benches/results/...` file the docs mention exists; a figure cited as
  `(benches/results/NAME.md, commit ABC1234)` names the commit that file records.
- DEVELOPERS.md's Layout names every module directory of the engine, and every path it
  names exists.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "DEVELOPERS.md", *(ROOT / "docs").glob("*.md")])

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"(?<!!)\[(?:[^\]\n]|\n(?!\n))*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
RESULT_FILE = re.compile(r"benches/results/([\w.-]+)")
CITATION = re.compile(
    r"benches/results/([\w.-]+\.md)\]?(?:\([^)\s]*\))?,\s+commit\s+([0-9a-f]{7,40})\b"
)
RECORDED_COMMIT = re.compile(r"^- git ([0-9a-f]{40})\b", re.M)


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where links are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's id for a heading: markup dropped, lower case, punctuation removed, spaces to
    hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    ids = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        ids.add(base if n == 0 else f"{base}-{n}")
    return ids


def broken_links(doc: Path) -> list[str]:
    """`target: why` for each relative link of `doc` that does not resolve."""
    problems = []
    for target in LINK.findall(prose(doc.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.exists():
            problems.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"{target}: no heading with id `{anchor}` in {path.name}")
    return problems


def bad_result_citations(doc: Path, root: Path = ROOT) -> list[str]:
    """Mentioned `benches/results` files that do not exist, and citations whose commit is not
    the one the file records."""
    text = doc.read_text()
    problems = []
    for name in sorted(set(RESULT_FILE.findall(text))):
        if not (root / "benches" / "results" / name).is_file():
            problems.append(f"benches/results/{name}: no such file")
    for name, commit in CITATION.findall(text):
        result = root / "benches" / "results" / name
        if not result.is_file():
            continue
        recorded = RECORDED_COMMIT.findall(result.read_text())
        if not recorded:
            problems.append(f"benches/results/{name} records no commit, so it cannot be cited")
        elif not recorded[0].startswith(commit):
            problems.append(
                f"benches/results/{name}: cited as commit {commit}, records {recorded[0]}"
            )
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    assert broken_links(doc) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_results_exist_with_their_commit(doc: Path) -> None:
    assert bad_result_citations(doc) == []


def test_the_docs_map_is_linked_from_the_readme() -> None:
    readme = ROOT / "README.md"
    linked = {
        (readme.parent / t.partition("#")[0]).resolve() for t in LINK.findall(readme.read_text())
    }
    assert {p.resolve() for p in (ROOT / "docs").glob("*.md")} <= linked


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## The `x` part: a (b)\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "[ok](other.md) [ok](other.md#the-x-part-a-b) [ok](#here) [web](https://x.invalid/)\n"
        "[gone](missing.md) [bad anchor](other.md#nope)\n\n"
        "`[not a link](missing-too.md)`\n\n```\n[not a link](nor-this.md)\n```\n\n# Here\n"
    )
    assert broken_links(doc) == [
        "missing.md: no such file",
        "other.md#nope: no heading with id `nope` in other.md",
    ]

    results = tmp_path / "benches" / "results"
    results.mkdir(parents=True)
    (results / "a.md").write_text("- git " + "ab12cd3" + "0" * 33 + " (dirty tree)\n")
    (results / "b.md").write_text("no commit here\n")
    doc.write_text(
        "([benches/results/a.md](benches/results/a.md), commit ab12cd3)\n"
        "(benches/results/a.md, commit 1234567)\n"
        "(benches/results/b.md, commit ab12cd3)\n"
        "`benches/results/c.md`\n"
    )
    assert bad_result_citations(doc, root=tmp_path) == [
        "benches/results/c.md: no such file",
        f"benches/results/a.md: cited as commit 1234567, records ab12cd3{'0' * 33}",
        "benches/results/b.md records no commit, so it cannot be cited",
    ]


def layout_block() -> str:
    text = (ROOT / "DEVELOPERS.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return FENCE.search(section).group(0)


def test_layout_names_every_engine_module_directory() -> None:
    block = layout_block()
    dirs = sorted(p.name for p in (ROOT / "crates/engine/src").iterdir() if p.is_dir())
    assert dirs and [d for d in dirs if f"{d}/" not in block] == []


def repository_names() -> set[str]:
    """The name of every file (`x.rs`) and directory (`x/`) of the source tree."""
    skip = {".git", "target", "build", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}
    names = set()
    for _, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in skip]
        names.update(f"{d}/" for d in dirnames)
        names.update(filenames)
    return names


def test_layout_names_only_paths_that_exist() -> None:
    named = set(re.findall(r"[\w.-]+(?:/|\.(?:rs|py|pyi|nix|sh|html|md)\b)", layout_block()))
    assert named and sorted(named - repository_names()) == []
