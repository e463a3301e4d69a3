"""The repository explains itself: every document that code, rules, tests or docs cite is in it."""

from __future__ import annotations

import re
import subprocess

from repo_paths import REPO

CITED_DOC = re.compile(r"\bdocs/[\w.-]+\.md\b")
OUTSIDE_DOC = re.compile(r"\b(DESIGN|ARCHITECTURE|STYLE)\.md\b")
TEXT_SUFFIXES = (".py", ".smk", ".md", ".yaml", ".yml", ".sh", ".toml", ".html", ".j2")


def _tracked_text_files():
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        if name.endswith(TEXT_SUFFIXES) or name == "Snakefile":
            yield name, (REPO / name).read_text(encoding="utf-8", errors="replace")


def test_every_cited_document_exists_and_none_outside_the_repository_is_cited():
    missing, outside = [], []
    for name, text in _tracked_text_files():
        if name == "tests/test_docs.py":
            continue
        missing += [f"{name}: {m}" for m in CITED_DOC.findall(text) if not (REPO / m).is_file()]
        outside += [f"{name}: {m.group(0)}" for m in OUTSIDE_DOC.finditer(text)]
    assert not missing, f"cited documents that are not in the repository: {missing}"
    assert not outside, f"citations of documents a clone does not have: {outside}"


def test_the_checker_sees_a_missing_document():
    found = CITED_DOC.findall("see docs/nowhere.md and docs/conventions.md")
    assert found == ["docs/nowhere.md", "docs/conventions.md"]
    assert OUTSIDE_DOC.search("as ARCHITECTURE.md says")
