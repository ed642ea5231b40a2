"""The site's promise: a broken page fails the build and names the page.

Each fault is built as a one-page site with the real ``conf.py`` (scripts/page_build.py),
execution forced, so these tests exercise exactly the configuration of ``nox -s docs``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support import ROOT, load_module

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (ROOT / "node_modules" / "katex").is_dir(),
    reason="the docs build needs node and node_modules/katex (scripts/setup.sh installs them)",
)


page_build = load_module("scripts/page_build.py")
check_site = load_module("scripts/check_site.py")


def _page(body: str) -> str:
    return page_build.MYST_NOTEBOOK_HEADER + "\n" + body


GOOD_PAGE = _page(
    """# A good page

The masked mean of $x = (1, 2, 3)$ over the first two entries:

$$
\\bar x = \\frac{\\sum_i m_i x_i}{\\sum_i m_i}
$$

```{code-cell} ipython3
import torch
from myst_nb import glue
from nemo_rl_theory import masked_mean

value = masked_mean(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 1, 0])).item()
direct = (1.0 + 2.0) / 2
assert abs(value - direct) < 1e-6, (value, direct)
glue("good_value", value, display=False)
```

The library gives {glue:text}`good_value:.4f`, as in {footcite:t}`schulman2017ppo`.

```{footbibliography}
```
"""
)

FAULTS = {
    "broken-cell": (
        _page("# Broken cell\n\n```{code-cell} ipython3\nundefined_name + 1\n```\n"),
        "NameError",
    ),
    "failing-assertion": (
        _page(
            "# Failing check\n\n$$\nk_3 = e^{\\ell} - 1 - \\ell\n$$\n\n"
            "```{code-cell} ipython3\nimport math\nell = 0.5\n"
            'assert math.exp(ell) - 1 - ell < 0, "k3 must be negative (it is not)"\n```\n'
        ),
        "k3 must be negative (it is not)",
    ),
    "broken-formula": (
        _page("# Broken formula\n\nFine $x^2$, broken:\n\n$$\n\\frac{1}{2\n$$\n"),
        "malformed LaTeX",
    ),
    "unknown-macro": (
        _page("# Unknown macro\n\nInline $\\notamacro{x}$ in text.\n"),
        "Undefined control sequence",
    ),
}


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fault_fails_the_build_naming_the_page(name: str, tmp_path: Path) -> None:
    text, symptom = FAULTS[name]
    result = page_build.build({name: text}, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"the build of {name} succeeded:\n{output[-3000:]}"
    assert f"{name}.md" in output, f"the failure does not name the page:\n{output[-3000:]}"
    assert symptom in output, f"the failure does not say what broke ({symptom!r}):\n{output[-3000:]}"


def test_good_page_builds_with_executed_glue_and_prerendered_math(tmp_path: Path) -> None:
    result = page_build.build({"good": GOOD_PAGE}, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    html = (tmp_path / "html" / "good.html").read_text()
    assert "1.5000" in html  # the glued number, formatted by the text role
    assert 'class="katex-display"' in html and 'class="katex"' in html  # rendered at build time
    assert "\\frac" not in html.split('class="katex-mathml"')[0]  # no raw LaTeX left for a script
    assert "Schulman" in html  # the footnote bibliography
    assert check_site.check_site(tmp_path / "html") == []


def _site(tmp_path: Path, page: str, css: str = "") -> Path:
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "local.css").write_text(css)
    (tmp_path / "index.html").write_text(page)
    return tmp_path


@pytest.mark.parametrize(
    ("page", "css", "problem"),
    [
        ('<script src="https://cdn.example.org/x.js"></script>', "", "remote asset https://cdn.example.org/x.js"),
        ('<link rel="stylesheet" href="//cdn.example.org/x.css">', "", "remote asset //cdn.example.org/x.css"),
        ('<img src="_static/missing.png">', "", "missing local asset _static/missing.png"),
        ("", "@font-face { src: url(https://fonts.example.org/f.woff2) }", "remote asset https://fonts"),
        ('<span class="katex-error">\\frac{</span>', "", "could not render"),
        ("<div style=\"background: url('http://example.org/b.png')\"></div>", "", "remote asset http://example.org"),
        ("<p>| a | b |\n|---|---|\n| 1 | 2 |</p>", "", "Markdown table(s) shown as raw text"),
        ("<p>{footbibliography}</p>", "", "MyST shown as raw text ({footbibliography})"),
        ("<p>as {footcite:p}`key` shows</p>", "", "MyST shown as raw text ({footcite:p})"),
        ("<p>| a | b |\n|\u2014|:\u2014:|\n| 1 | 2 |</p>", "", "Markdown table(s) shown as raw text"),
    ],
)
def test_check_site_flags_what_breaks_offline(tmp_path: Path, page: str, css: str, problem: str) -> None:
    problems = check_site.check_site(_site(tmp_path, page, css))
    assert len(problems) == 1 and problem in problems[0], problems


def test_check_site_allows_links_and_local_assets(tmp_path: Path) -> None:
    page = (
        '<a href="https://arxiv.org/abs/2402.03300">paper</a><link rel="canonical" href="https://example.org/">'
        '<link rel="stylesheet" href="_static/local.css?v=1"><img src="data:image/png;base64,AAAA">'
        # a table built from strings in a cell's source is code, not an unparsed table
        '<pre><span>"| a | b |\\n|---|---|"</span></pre><p>a range a|b and an em dash \u2014 in prose</p>'
        "<pre>```{footbibliography}\n```</pre><code>{glue:text}`key`</code><p>a set {1, 2}</p>"
        '<math><annotation encoding="application/x-tex">\\pi_{ref}</annotation></math>'
    )
    assert check_site.check_site(_site(tmp_path, page, "a { color: red }")) == []


def test_library_change_selects_a_fresh_execution_cache(tmp_path: Path) -> None:
    execution_cache = load_module("docs/_ext/execution_cache.py")

    package = tmp_path / "pkg"
    shutil.copytree(ROOT / "src" / "nemo_rl_theory", package)
    original = execution_cache.library_fingerprint(package)
    assert original == execution_cache.library_fingerprint(ROOT / "src" / "nemo_rl_theory")
    kl = package / "kl.py"
    kl.write_text(kl.read_text() + "\n# an edit\n")
    edited = execution_cache.library_fingerprint(package)
    assert edited != original
    (package / "kl.py").rename(package / "kl_renamed.py")
    assert execution_cache.library_fingerprint(package) not in {original, edited}

    cache_root = tmp_path / "cache"
    old = execution_cache.select_cache(cache_root, original)
    old.mkdir(parents=True)
    new = execution_cache.select_cache(cache_root, edited)
    assert new == cache_root / edited and not old.exists()


def _timed_page(name: str, seconds: float) -> str:
    """A page that sleeps, glues a value and records when its cell ran (in the page's folder)."""
    return _page(
        f"""# Timed page {name}

```{{code-cell}} ipython3
import time
from pathlib import Path
from myst_nb import glue

start = time.time()
time.sleep({seconds})
Path("ran-{name}.txt").write_text(f"{{start}} {{time.time()}}")
glue("value_{name}", 6 * 7, display=False)
```

The answer is {{glue:text}}`value_{name}`.
"""
    )


def test_pages_execute_concurrently_into_the_cache_myst_nb_reads(tmp_path: Path) -> None:
    pages = {name: _timed_page(name, 2.0) for name in ("first", "second", "third")}
    result = page_build.build(pages, tmp_path, execution_mode="cache")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "executing 3 pages, 2 at a time" in output, output[-3000:]
    # myst-nb found every page in the cache and executed none itself
    assert output.count("Using cached notebook") == 3, output[-3000:]
    assert "Executing notebook" not in output, output[-3000:]
    for name in pages:
        assert 'The answer is <span class="pasted-text">42</span>' in (tmp_path / "html" / f"{name}.html").read_text()
    # two kernels ran at the same time: some page started before another one ended
    spans = sorted(tuple(map(float, (tmp_path / "src" / f"ran-{n}.txt").read_text().split())) for n in pages)
    assert spans[1][0] < spans[0][1], spans


def test_page_failing_in_parallel_execution_still_fails_the_build_naming_it(tmp_path: Path) -> None:
    text, symptom = FAULTS["failing-assertion"]
    pages = {"failing-assertion": text, "fine": _timed_page("fine", 0.0)}
    result = page_build.build(pages, tmp_path, execution_mode="cache")
    output = result.stdout + result.stderr
    assert "executing 2 pages, 2 at a time" in output, output[-3000:]
    assert result.returncode != 0, f"the build succeeded:\n{output[-3000:]}"
    assert "failing-assertion.md" in output and symptom in output, output[-3000:]
    assert "fine: executed in" in output, output[-3000:]


def test_execute_notebooks_rejects_a_worker_count_below_one() -> None:
    parallel_execution = load_module("docs/_ext/parallel_execution.py")
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        list(parallel_execution.execute_notebooks([], 0))
