"""The docs stay short and connected: README ≤ 15 KB, one page per feature under docs/ linked from
it, every relative link and #anchor in README, BENCHMARKS and docs/ resolves, and every number in
BENCHMARKS.md's headline tables is one of the measured numbers kept in docs/benchmarks-history.md."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README_LIMIT = 15_000  # bytes
FEATURE_PAGES = ("samplers", "freeu", "recipe", "optimiser", "lab", "sigma_graph", "batch")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def markdown_files():
    return [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))]


def without_code(text: str) -> str:
    """The text outside ``` fences and `inline code` (links in code are not links)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path: Path) -> set:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen, out = {}, set()
    for line in re.sub(r"```.*?```", "", path.read_text(), flags=re.S).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_readme_is_short():
    size = len((REPO / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes (limit {README_LIMIT}): move detail to docs/"


def test_every_feature_has_a_page_linked_from_the_readme():
    readme_links = set(LINK.findall(without_code((REPO / "README.md").read_text())))
    for name in FEATURE_PAGES:
        assert (REPO / "docs" / f"{name}.md").is_file(), f"docs/{name}.md is missing"
        assert f"docs/{name}.md" in readme_links, f"README.md does not link docs/{name}.md"
    pages = {p.stem for p in (REPO / "docs").glob("*.md")}
    orphans = {p for p in pages if not any(f"docs/{p}.md" in link for link in readme_links)}
    assert not orphans, f"docs pages no README link reaches: {sorted(orphans)}"


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for md in markdown_files():
        for target in LINK.findall(without_code(md.read_text())):
            if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
                continue
            path, _, anchor = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            if not dest.exists():
                broken.append(f"{md.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{md.relative_to(REPO)}: {target} (no such heading)")
            elif REPO not in dest.parents and dest != REPO:
                broken.append(f"{md.relative_to(REPO)}: {target} (outside the repo)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_link_check_sees_broken_links(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A title\n[ok](#a-title) [bad](#no-title) `[code](nowhere.md)`\n")
    found = LINK.findall(without_code(page.read_text()))
    assert found == ["#a-title", "#no-title"]
    assert "a-title" in anchors(page) and "no-title" not in anchors(page)


def test_headline_numbers_come_from_the_history():
    """A headline figure is one of the measured ones, not a number kept by hand in one place only."""
    history = set(NUMBER.findall((REPO / "docs" / "benchmarks-history.md").read_text()))
    missing = []
    for line in (REPO / "BENCHMARKS.md").read_text().splitlines():
        if line.startswith("|") and not set(line) <= set("|-: "):
            missing += [f"{n} in: {line}" for n in NUMBER.findall(line) if n not in history]
    assert not missing, "numbers in BENCHMARKS.md's tables not in docs/benchmarks-history.md:\n" + "\n".join(missing)


def test_recipe_page_table_is_what_the_recipe_computes():
    """docs/recipe.md's table of the node's outputs, row by row, from the recipe maths."""
    from tests.test_recipe_math import PUBLISHED_SIGMAS, calls, recipe_outputs
    rows = {}
    for line in (REPO / "docs" / "recipe.md").read_text().splitlines():
        m = re.match(r"\| (\d+)² (\d+) steps \| (.*) \|$", line)
        if m and " | " in m.group(3) and "model calls" not in line:
            rows[(m.group(1), int(m.group(2)))] = m.group(3).split(" | ")
    assert set(rows) == set(PUBLISHED_SIGMAS), sorted(rows)
    for (res, steps), cells in rows.items():
        r, sig, mid, grid, window, on = recipe_outputs(res, steps)
        freeu = (", ".join(f"{float(grid[i]):.4f}" for i in on) + f" (σ ≤ {window.high:.4f})"
                 if on else "off (not published)")
        want = [", ".join(f"{float(s):.4f}" for s in sig), f"UniPC order {r.order}",
                f"{mid:.4f}" if mid is not None else "—", freeu, str(len(calls(grid, r.afs)))]
        assert cells == want, (res, steps)
