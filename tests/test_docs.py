"""The documentation cannot rot: its code is the examples' code, its figures come from the
committed benchmark data, and every page is reachable.

(``mkdocs build --strict`` in ``.ci/run`` checks links, snippets and that every public name is
documented; these tests check what the build cannot see.)
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
SNIPPET = re.compile(r'^--8<-- "([^":]+)(?::([\w-]+))?"', re.M)


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _section(path: Path, name: str) -> str:
    text = path.read_text()
    start = text.index(f"# --8<-- [start:{name}]\n") + len(f"# --8<-- [start:{name}]\n")
    return text[start:text.index(f"# --8<-- [end:{name}]")]


def test_readme_is_a_first_visit_under_10_kb():
    assert len((ROOT / "README.md").read_bytes()) < 10_000


def test_readme_code_is_the_quickstart_example_and_it_is_accurate():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## A first solve\n\n```python\n(.*?)```", readme, re.S).group(1)
    assert block == _section(EXAMPLES / "quickstart.py", "quickstart")
    err = _load(EXAMPLES / "quickstart.py", "example_quickstart").main()
    # dopri5 at torchdiffeq's default rtol 1e-7 over 4 turns of the spiral; tsit5 at 1e-8
    assert err["odeint error"] < 1e-6
    assert err["solve_ivp error"] < 1e-8
    assert err["dense output error"] < 1e-6  # tsit5's 4th-order interpolant


def _nav_pages() -> list[str]:
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:\n", 1)[1]
    return re.findall(r"^\s+- (?:[^\n]*?: )?([\w./-]+\.md)$", nav, re.M)


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    nav = _nav_pages()
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
    assert len(nav) == len(set(nav))


def test_every_tutorial_is_backed_by_scripts_that_the_suite_runs():
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py")
                      if p.name != Path(__file__).name)
    tutorials = [p for p in (DOCS / "tutorials").glob("*.md") if p.name != "index.md"]
    assert len(tutorials) >= 11
    for page in tutorials:
        scripts = {m.group(1) for m in SNIPPET.finditer(page.read_text())}
        assert scripts, f"{page.name} includes no example script"
        for script in scripts:
            path = ROOT / script
            assert path.is_file(), f"{page.name} includes missing {script}"
            assert script.startswith("examples/"), f"{page.name} includes {script}"
            # the suite loads or runs the script by its file name
            assert re.search(rf"['\"]{re.escape(path.stem)}(\.py)?['\"]", tests), (
                f"{script} (shown in {page.name}) is not run by any test")


def test_snippet_sections_exist():
    for page in DOCS.rglob("*.md"):
        for m in SNIPPET.finditer(page.read_text()):
            if m.group(2):
                text = (ROOT / m.group(1)).read_text()
                assert f"# --8<-- [start:{m.group(2)}]" in text, (page, m.group(0))
                assert f"# --8<-- [end:{m.group(2)}]" in text, (page, m.group(0))


def test_benchmark_figures_are_drawn_from_the_committed_results(tmp_path):
    pytest.importorskip("matplotlib")
    plot = _load(ROOT / "benchmarks" / "plot_results.py", "plot_results")
    paths = plot.main(["--out", str(tmp_path)])
    page = (DOCS / "benchmarks.md").read_text()
    assert {p.name for p in paths} == {"bench_work_precision.png", "bench_accuracy.png",
                                       "bench_gradient_memory.png", "bench_loop_overhead.png"}
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width >= 700 and height >= 400
        # the page shows the committed copy of each figure
        assert f"](figures/{p.name})" in page
        assert (DOCS / "figures" / p.name).is_file()


def test_the_docs_hook_finds_undocumented_names_and_parameters(caplog):
    hooks = _load(DOCS / "hooks.py", "docs_hooks")

    def half_documented(a, b):
        """Doc.

        Args:
            a: the first.
        """

    assert hooks.missing_parameters(half_documented) == ["b"]
    objects = hooks.public_objects()
    assert {"neurode.odeint", "neurode.solvers.register_method", "neurode.nn.ODEBlock",
            "neurode.data.load_digits"} <= set(objects)
    undocumented = {p: m for p, o in objects.items() if (m := hooks.missing_parameters(o))}
    assert undocumented == {}
    methods = {f"{p}.{n}": hooks.missing_parameters(m) or not (m.__doc__ or "").strip()
               for p, o in objects.items() for n, m in hooks.public_methods(o)}
    assert "neurode.nn.CNF.sample" in methods and "neurode.Solution.evaluate" in methods
    assert {k: v for k, v in methods.items() if v} == {}
    # a build that saw no '::: name' block reports every public name
    hooks._documented.clear()
    with caplog.at_level("WARNING", logger="mkdocs.plugins.neurode"):
        hooks.on_post_build({})
    reported = {r.args[0] for r in caplog.records if "no '::: " in r.getMessage()}
    assert reported == set(objects)


def test_lists_and_tables_start_after_a_blank_line():
    """Python-Markdown (unlike GitHub) runs a list or a table that directly follows a line of
    text into that paragraph: the page then shows '- a - b' as one run of text."""
    starts = re.compile(r"^(- |\* |\d+\. |\|)")
    for page in DOCS.rglob("*.md"):
        fence = False
        prev = ""
        for n, line in enumerate(page.read_text().split("\n"), start=1):
            if line.lstrip().startswith("```"):
                fence = not fence
            if not fence and starts.match(line) and prev.strip() and not prev.startswith(" ") \
                    and not starts.match(prev) and not prev.startswith(("<", "!!!", "===")):
                pytest.fail(f"{page.relative_to(ROOT)}:{n}: a list or table right after text")
            prev = line


def test_pages_hold_no_control_characters():
    """A tab or other control character in a page is a mangled escape (``\\t`` of ``\\text``
    written through a Python string once broke a formula this way)."""
    for page in DOCS.rglob("*.md"):
        for n, line in enumerate(page.read_text().split("\n"), start=1):
            bad = [c for c in line if ord(c) < 32]
            assert not bad, f"{page.relative_to(ROOT)}:{n}: control character {bad[0]!r}"


def test_readme_links_into_the_docs_resolve():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(((?!https?://)[^)#]+)(?:#[^)]*)?\)", readme)
    assert len(links) >= 10
    for link in links:
        assert (ROOT / link).exists(), f"README links to missing {link}"
