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


def test_the_readme_shows_ants_syn_rule_as_it_is():
    """README's worked example of the rule route is baselines/ants-syn.smk's rule, verbatim."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    shown = re.search(r"^    rule ants_syn_evaluate:\n(?:(?:    .*)?\n)+", readme, flags=re.M)
    assert shown, "README: the ants_syn_evaluate rule block is missing"
    block = "\n".join(line[4:] for line in shown.group(0).rstrip().splitlines())
    rule_file = (REPO / "baselines" / "ants-syn.smk").read_text(encoding="utf-8")
    assert block in rule_file, "README's ants_syn_evaluate rule differs from baselines/ants-syn.smk"
