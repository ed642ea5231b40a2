"""Static checks of the site's sources (fast; the build itself is ``nox -s docs``).

* every display formula on an executable page is followed, within its section, by a code cell
  that asserts something: a formula the code does not check is a defect;
* text quotes only glued values the page defines, and cites only keys of references.bib;
* the seeds' markup errors (two-colon card openers, ``++++``) are not repeated;
* no placeholder text; every page converts to a valid notebook.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import ROOT, load_module

DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.relative_to(DOCS).parts)

export_notebooks = load_module("scripts/export_notebooks.py")
EXECUTABLE = export_notebooks.executable_pages(DOCS)

ASSERTION = re.compile(r"\bassert\b|assert_close|assert_allclose|assert_array")
FENCE = re.compile(r"^(`{3,}|~{3,})(.*)$")
HIDDEN = re.compile(r"hide-input|remove-input|hide-cell|remove-cell")


@dataclass
class Block:
    kind: str  # "formula", "check" (visible code cell that asserts), "code", "hidden", "hidden-check", "heading"
    line: int


def blocks(text: str) -> list[Block]:
    """Formulas, code cells and headings of a MyST page, in order (1-based lines)."""
    found: list[Block] = []
    lines = text.splitlines()
    i = 0
    in_front_matter = bool(lines) and lines[0].strip() == "---"
    while i < len(lines):
        line = lines[i]
        if in_front_matter:
            in_front_matter = not (i > 0 and line.strip() == "---")
            i += 1
            continue
        fence = FENCE.match(line)
        if fence:
            marker, info = fence.group(1), fence.group(2).strip()
            end = i + 1
            while end < len(lines) and not lines[end].startswith(marker):
                end += 1
            body = "\n".join(lines[i + 1 : end])
            if info.startswith("{code-cell}"):
                if HIDDEN.search(body.split("\n", 1)[0] if body.startswith(":tags:") else ""):
                    # A hidden cell never counts as the check of a formula: checks stay visible.
                    found.append(Block("hidden-check" if ASSERTION.search(body) else "hidden", i + 1))
                else:
                    found.append(Block("check" if ASSERTION.search(body) else "code", i + 1))
            elif info.startswith("{math}"):
                found.append(Block("formula", i + 1))
            i = end + 1
            continue
        if line.startswith("$$"):
            found.append(Block("formula", i + 1))
            # A one-line $$...$$ closes itself; otherwise skip to the closing $$.
            if not (len(line.strip()) > 2 and line.rstrip().endswith("$$")) and "$$" not in line[2:]:
                i += 1
                while i < len(lines) and "$$" not in lines[i]:
                    i += 1
        elif re.match(r"^#{1,6} ", line):
            found.append(Block("heading", i + 1))
        i += 1
    return found


def unchecked_formulas(text: str) -> list[int]:
    """Lines of display formulas with no asserting code cell after them in their section."""
    missing: list[int] = []
    pending: list[int] = []
    for block in blocks(text):
        if block.kind == "formula":
            pending.append(block.line)
        elif block.kind == "check":
            pending = []
        elif block.kind == "heading":
            missing += pending
            pending = []
    return missing + pending


def test_block_scanner_on_a_known_page() -> None:
    text = (
        "---\nkernelspec:\n  name: python3\n---\n# T\n\n$$\na\n$$\n\n```{code-cell} ipython3\nassert 1\n```\n"
        "## S\n\n$$ b $$\n\n```python\n$$ not a formula $$\n```\n\n```{code-cell} ipython3\nx = 1\n```\n## U\n"
        "\n$$ c $$\n\n```{code-cell} ipython3\n:tags: [hide-input]\nassert 1\n```\n"
    )
    assert [(b.kind, b.line) for b in blocks(text)] == [
        ("heading", 5), ("formula", 7), ("check", 11), ("heading", 14), ("formula", 16), ("code", 22), ("heading", 25),
        ("formula", 27), ("hidden-check", 29),
    ]  # fmt: skip
    assert unchecked_formulas(text) == [16, 27]


SECTIONS = {
    "theory": {
        "mathematical-foundations",
        "grpo-theory",
        "sequence-policy-gradients",
        "kl-regularization",
        "dpo-theory",
        "sft-theory",
        "loss-functions",
    },
    "algorithm-customization": {
        "custom-grpo",
        "custom-dpo",
        "custom-loss-functions",
    },
    "training": {
        "multi-objective-training",
        "pareto-optimization",
        "curriculum-learning",
        "adaptive-curriculum",
        "custom-loss-functions",
        "loss-function-design",
        "training-stability",
        "learning-rate-scheduling",
        "hyperparameter-optimization",
        "multi-objective-tuning",
    },
    "performance": {
        "profiling",
        "distributed-training",
        "memory-optimization",
        "mixed-precision",
        "benchmarking",
        "monitoring",
    },
    "performance-scaling": {
        "distributed-training",
        "memory-optimization",
    },
    "research": {
        "experimental-design",
        "reproducibility",
        "ablation-studies",
        "hyperparameter-optimization",
        "custom-algorithms",
        "performance-analysis",
    },
    "research-validation": {
        "experimental-design",
        "model-evaluation",
        "reproducible-research",
    },
    "production-deployment": {
        "model-serving",
        "monitoring-alerting",
    },
}


def toctree_entries(text: str) -> list[str]:
    entries: list[str] = []
    for body in re.findall(r"```\{toctree\}\n(.*?)```", text, re.S):
        entries += [line.strip() for line in body.splitlines() if line.strip() and not line.startswith(":")]
    return entries


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_section_pages_are_listed_and_executable(section: str) -> None:
    folder = DOCS / "advanced" / section
    pages = {p.stem for p in folder.glob("*.md")} - {"index"}
    assert pages == SECTIONS[section]
    assert set(toctree_entries((folder / "index.md").read_text())) == pages
    assert f"{section}/index" in toctree_entries((DOCS / "advanced" / "index.md").read_text())
    assert {p.stem for p in EXECUTABLE if p.parent == folder} == pages


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_card_links_resolve(page: Path) -> None:
    for target in re.findall(r"^:link: (\S+)\n:link-type: doc$", page.read_text(), re.M):
        assert (page.parent / f"{target}.md").exists(), f"{page.relative_to(ROOT)}: card links to missing {target}"


@pytest.mark.parametrize("page", EXECUTABLE, ids=lambda p: str(p.relative_to(DOCS)))
def test_every_formula_is_followed_by_a_check(page: Path) -> None:
    missing = unchecked_formulas(page.read_text())
    assert not missing, f"{page.relative_to(ROOT)}: formulas at lines {missing} have no asserting code cell after them"


@pytest.mark.parametrize("page", EXECUTABLE, ids=lambda p: str(p.relative_to(DOCS)))
def test_checks_are_never_hidden(page: Path) -> None:
    hidden = [b.line for b in blocks(page.read_text()) if b.kind == "hidden-check"]
    assert not hidden, f"{page.relative_to(ROOT)}: cells at lines {hidden} assert but hide their code"


@pytest.mark.parametrize("page", EXECUTABLE, ids=lambda p: str(p.relative_to(DOCS)))
def test_glued_values_quoted_in_the_text_are_defined(page: Path) -> None:
    text = page.read_text()
    defined = set(re.findall(r"""glue\(\s*["']([^"'{]+)["']""", text))
    # Keys built in a loop, glue(f"prefix_{name}", ...): any quoted key with that prefix counts.
    prefixes = tuple(re.findall(r"""glue\(\s*f["']([^"'{]*)\{""", text))
    quoted = {key.split(":")[0] for key in re.findall(r"\{glue(?::\w+)?\}`([^`]+)`", text)}
    undefined = sorted(key for key in quoted - defined if not (prefixes and key.startswith(prefixes)))
    assert not undefined, f"{page.relative_to(ROOT)} quotes undefined glue keys {undefined}"


BIB_KEYS = set(re.findall(r"^@\w+\{([^,]+),", (DOCS / "references.bib").read_text(), re.M))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_citations_exist_and_have_a_bibliography(page: Path) -> None:
    text = re.sub(r"``.+?``", "", page.read_text())  # examples in inline code are not citations
    cited = {key.strip() for group in re.findall(r"\{footcite(?::\w+)?\}`([^`]+)`", text) for key in group.split(",")}
    assert cited <= BIB_KEYS, f"{page.relative_to(ROOT)} cites unknown keys {sorted(cited - BIB_KEYS)}"
    if cited:
        # a bare ``{footbibliography}`` line is a paragraph of text; the directive needs a fence
        assert re.search(r"^```\{footbibliography\}\n```", text, re.M), (
            f"{page.relative_to(ROOT)} cites papers but has no fenced ```{{footbibliography}} directive"
        )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_no_seed_markup_errors_or_placeholders(page: Path) -> None:
    for number, line in enumerate(page.read_text().splitlines(), 1):
        where = f"{page.relative_to(ROOT)}:{number}"
        assert not re.match(r"^::\{", line), f"{where}: card opened with two colons (needs three)"
        assert not re.match(r"^\+{3,}\s*$", line), f"{where}: card footer separators are deprecated: use :footer:"
        assert not re.search(r"coming soon|\bTODO\b|\bTBD\b|lorem ipsum|placeholder", line, re.I), f"{where}: {line}"


def test_pages_export_to_valid_notebooks(tmp_path: Path) -> None:
    written = export_notebooks.export(tmp_path, DOCS)
    assert len(written) == len(EXECUTABLE) >= 5
    import nbformat

    for notebook_path, page in zip(written, EXECUTABLE, strict=True):
        notebook = nbformat.read(notebook_path, as_version=4)
        code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert len(code_cells) == page.read_text().count("```{code-cell}"), notebook_path
        assert notebook.metadata["kernelspec"]["name"] == "python3"


# --- landings mirror the seeds (NeMo RL's "Advanced Topics" pages in ../shared/seeds) ------------

SEEDS = ROOT.parent / "shared" / "seeds"
CARD = re.compile(
    r"^:{2,}\{grid-item-card\}\s*\{octicon\}`([^;`]+)[^`]*`\s*(.+?)\s*\n:link: (\S+)\n(.*?)^:{3}\s*$", re.M | re.S
)
BADGE = re.compile(r"\{bdg-(\w+)\}`([^`]+)`")


def cards(text: str) -> dict[str, tuple[str, tuple[str, str] | None]]:
    """Card link target -> (title, badge) of a landing page, the seeds' markup errors tolerated.

    Icons are not compared: some of the seeds' octicons do not exist (``target``, ``memory``),
    and the build fails on an unknown one.
    """
    found = {}
    for _icon, title, target, body in CARD.findall(text):
        badge = BADGE.search(body)
        found[target] = (title, badge.groups() if badge else None)
    return found


def seed_landings() -> list[tuple[Path, Path]]:
    """(seed, landing page) for every seed whose H1 title is a page of the site."""
    if not SEEDS.is_dir():
        return []
    by_title = {}
    for page in PAGES:
        heading = re.search(r"^# (.+)$", page.read_text(), re.M)
        if heading:
            by_title[heading.group(1).strip().lower()] = page
    pairs = []
    for seed in sorted(SEEDS.glob("*.txt")):
        title = re.search(r"^# (.+)$", seed.read_text(), re.M).group(1).strip().lower()
        if title in by_title:
            pairs.append((seed, by_title[title]))
        if seed.name[:3] in SEED_CARDS_ON:
            pairs.append((seed, SEED_CARDS_ON[seed.name[:3]]))
    return pairs


# Seed 002 ("About NeMo RL Advanced Topics", docs/advanced/about.md) is an overview of four areas
# whose cards the site also places on its Advanced Topics landing, beside seed 001's.
SEED_CARDS_ON = {"002": DOCS / "advanced" / "index.md"}


def matching_card(ours: dict[str, tuple], seed_target: str) -> str | None:
    """Our card target for a seed's: the same path, or the same page in a sibling section.

    Seed 000's cards link pages of its own folder (``mathematical-foundations``) that the site
    keeps in their sections (``../theory/mathematical-foundations``).
    """
    for target in ours:
        if target == seed_target or target.endswith("/" + seed_target):
            return target
    return None


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the seeds live in ../shared/seeds beside the repository")
@pytest.mark.parametrize("seed, landing", seed_landings(), ids=lambda p: p.name)
def test_landing_cards_carry_the_seed_titles_and_badges(seed: Path, landing: Path) -> None:
    ours = cards(landing.read_text())
    expected = cards(seed.read_text())
    compared = 0
    for target, card in expected.items():
        ours_target = matching_card(ours, target)
        if ours_target is None:
            assert not (landing.parent / f"{target}.md").exists(), (
                f"{landing.relative_to(ROOT)}: page {target} is built but has no card"
            )
            continue
        assert (landing.parent / f"{ours_target}.md").resolve().exists(), f"{ours_target} is not a page"
        assert ours[ours_target] == card, (
            f"{landing.relative_to(ROOT)}: card {ours_target} is {ours[ours_target]}, seed {card}"
        )
        compared += 1
    assert compared, f"{landing.relative_to(ROOT)}: none of {seed.name}'s card targets is built"


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the seeds live in ../shared/seeds beside the repository")
def test_about_page_carries_all_ten_cards_of_seed_002() -> None:
    seed = next(SEEDS.glob("002_*.txt"))
    about = DOCS / "advanced" / "about.md"
    expected = cards(seed.read_text())
    assert len(expected) == 10
    assert cards(about.read_text()) == expected


def test_every_built_seed_landing_is_checked() -> None:
    # 000 (Advanced Algorithm Development), 001 (Advanced Topics), 002 (its four areas, on the same
    # landing), 003 (Advanced Training Techniques), 004 (Mathematical Foundations & Theory).
    if SEEDS.is_dir():
        assert {seed.name[:3] for seed, _ in seed_landings()} >= {"000", "001", "002", "003", "004"}


# Sections whose landing has no seed of its own: their cards are those of one section of a seed
# (seed 001's "Performance & Optimization", seed 002's "Performance & Scaling"), linked from the
# section folder, so ``performance/profiling`` in the seed is ``profiling`` on the landing.
SECTION_SEEDS = {
    "performance": ("001", "Performance & Optimization"),
    "performance-scaling": ("002", "Performance & Scaling"),
    "research": ("001", "Research & Experimentation"),
    "research-validation": ("002", "Research & Validation"),
    "production-deployment": ("002", "Production Deployment"),
}


def seed_section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"seed has no section {heading!r}"
    return match.group(1)


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the seeds live in ../shared/seeds beside the repository")
@pytest.mark.parametrize("section", sorted(SECTION_SEEDS))
def test_section_landing_carries_its_seed_sections_cards(section: str) -> None:
    number, heading = SECTION_SEEDS[section]
    (seed,) = SEEDS.glob(f"{number}_*.txt")
    seed_cards = cards(seed_section(seed.read_text(), heading))
    in_seed = {target.removeprefix(f"{section}/"): card for target, card in seed_cards.items()}
    assert all("/" not in target for target in in_seed), f"{seed.name}: {heading} links outside {section}/"
    # A section that lands page by page carries the cards of the pages it has, and no other.
    built = SECTIONS[section]
    expected = {target: card for target, card in in_seed.items() if target in built}
    assert set(expected) == built, f"{section}: pages {sorted(built - set(expected))} have no card in {seed.name}"
    landing = DOCS / "advanced" / section / "index.md"
    assert cards(landing.read_text()) == expected
    assert seed_section(landing.read_text(), heading).count("grid-item-card") == len(expected)


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the seeds live in ../shared/seeds beside the repository")
def test_every_seed_card_resolves_to_a_built_page() -> None:
    # A seed card's target is a page path under docs/advanced, or a page of that name in a section
    # folder (seed 000's and 004's cards link their own folder's pages).
    advanced = DOCS / "advanced"
    built = {str(page.relative_to(advanced).with_suffix("")) for page in advanced.rglob("*.md")}
    missing = []
    for seed in sorted(SEEDS.glob("*.txt")):
        for target in re.findall(r"^:link: (\S+)", seed.read_text(), re.M):
            if not any(page == target or page.endswith("/" + target) for page in built):
                missing.append(f"{seed.name[:3]}: {target}")
    assert not missing, f"seed cards without a page: {missing}"
