"""The report: Markdown, LaTeX, HTML and PDF from a tiny fake results/90_summary tree."""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import re
import shutil
import stat
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from metarec_lib import report

CLAIMS = pd.DataFrame(
    {
        "claim": ["a|b wins", "x_y & z", "cold start"],
        "value": [0.123456, 12345.678, np.nan],
        "config": ['{"a": {"b": 1}}', "plain", "plain"],
        "met": [True, False, True],
    }
)
OUTLINE = {
    "title": "metarec: a tiny study",
    "intro": "What this *study* asks.",
    "sections": [
        {
            "title": "Claims versus evidence",
            "text": "Each claim, checked.",
            "table": "tables/claims.csv",
            "figure": None,
            "latex": True,
        },
        {
            "title": "Pareto: cost & quality (v2)",
            "text": "Cheaper models can be good.",
            "table": "tables/big.csv",
            "figure": "figures/pareto.png",
        },
        {"title": "Notes", "text": "Nothing else.", "table": None, "figure": None},
    ],
}
SOURCE_MARKER = "SOURCE_MARKER_42"


@pytest.fixture(scope="module")
def png() -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1), dpi=20)
    ax.plot([0, 1], [0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def make_tree(results: Path, png: bytes, outline: dict = OUTLINE) -> Path:
    """results/90_summary as the executed summary notebook leaves it; returns `results`."""
    summary = results / "90_summary"
    (summary / "tables").mkdir(parents=True)
    (summary / "figures").mkdir()
    CLAIMS.to_csv(summary / "tables" / "claims.csv", index=False)
    big = pd.DataFrame({"model": [f"m{i}" for i in range(75)], "ndcg": np.linspace(0, 1, 75)})
    big.to_csv(summary / "tables" / "big.csv", index=False)
    (summary / "figures" / "pareto.png").write_bytes(png)
    (summary / "outline.json").write_text(json.dumps(outline), encoding="utf-8")
    nb = nbformat.v4.new_notebook()
    nb.cells.append(
        nbformat.v4.new_markdown_cell(
            "# Title\n\nIntro text.\n\n## Section A\n\n![pareto](figures/pareto.png)"
        )
    )
    code = nbformat.v4.new_code_cell(f"print('{SOURCE_MARKER}')", execution_count=1)
    code.outputs = [
        nbformat.v4.new_output(
            "display_data",
            data={"image/png": base64.b64encode(png).decode(), "text/plain": "<Figure>"},
        )
    ]
    nb.cells.append(code)
    nb.cells.append(nbformat.v4.new_markdown_cell("## Costs & 50% users\n\nThe end."))
    nbformat.write(nb, summary / "90_summary.ipynb")
    return results


@pytest.fixture
def no_browser(tmp_path, monkeypatch):
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture(scope="module")
def built(tmp_path_factory, png):
    """One build (nbconvert takes a second) shared by the read-only tests: (results, out, log)."""
    results = make_tree(tmp_path_factory.mktemp("results"), png)
    empty = tmp_path_factory.mktemp("empty_bin")
    log = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(log):
        mp.setenv("PATH", str(empty))  # no browser, whatever this machine has installed
        out = report.build_report(results)
    return results, out, log.getvalue()


def test_format_value_and_slug_by_hand():
    assert report.format_value(0.123456) == "0.1235"
    assert report.format_value(12345.678) == "12346"  # no exponent for large numbers
    assert report.format_value(1.5e-6) == "1.5e-06"
    assert report.format_value(float("nan")) == ""
    assert report.format_value(7) == "7"
    assert report.github_slug("Claims versus evidence") == "claims-versus-evidence"
    assert report.github_slug("Pareto: cost & quality (v2)") == "pareto-cost--quality-v2"
    assert report.github_slug("Top_k hit-rate!") == "top_k-hit-rate"


def test_markdown_title_toc_tables_and_figure(built):
    results, out, _ = built
    text = out["markdown"].read_text(encoding="utf-8")
    assert out["markdown"] == results / "REPORT.md"
    assert text.startswith("# metarec: a tiny study\n\nWhat this *study* asks.")
    assert "- [Claims versus evidence](#claims-versus-evidence)" in text
    assert "- [Pareto: cost & quality (v2)](#pareto-cost--quality-v2)" in text
    assert "- [Notes](#notes)" in text
    assert (
        "## Claims versus evidence\n\nEach claim, checked.\n\n| claim | value | config | met |"
        in text
    )
    assert "|---|---:|---|---|" in text
    assert r"| a\|b wins | 0.1235 | {" in text
    assert "| x_y & z | 12346 |" in text
    assert "| cold start |  | plain | True |" in text  # NaN left empty
    assert "(first 60 of 75 rows; full table: [big.csv](90_summary/tables/big.csv))" in text
    big_rows = [line for line in text.splitlines() if re.match(r"\| m\d+ \|", line)]
    assert len(big_rows) == 60 and big_rows[-1].startswith("| m59 |")
    figure = "![Pareto: cost & quality (v2)](90_summary/figures/pareto.png)"
    assert figure in text
    assert (results / "90_summary/figures/pareto.png").is_file()
    # Sections appear in outline order.
    positions = [text.index(f"## {s['title']}") for s in OUTLINE["sections"]]
    assert positions == sorted(positions)


def test_markdown_repeated_titles_get_github_suffixes(tmp_path, png):
    outline = {
        "title": "Study",
        "sections": [{"title": "Results"}, {"title": "Results", "text": "### Study"}],
    }
    make_tree(tmp_path, png, outline)
    text = report.render_markdown(tmp_path / "90_summary")
    assert "- [Results](#results)\n- [Results](#results-1)" in text


def test_markdown_names_missing_files(tmp_path, png):
    summary = tmp_path / "90_summary"
    summary.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(summary / "outline.json"))):
        report.render_markdown(summary)
    make_tree(tmp_path / "r", png)
    summary = tmp_path / "r" / "90_summary"
    (summary / "figures" / "pareto.png").unlink()
    with pytest.raises(FileNotFoundError, match="figures/pareto.png"):
        report.render_markdown(summary)
    (summary / "tables" / "claims.csv").unlink()
    with pytest.raises(FileNotFoundError, match="tables/claims.csv"):
        report.render_markdown(summary)


def test_outline_errors_name_the_problem(tmp_path, png):
    bad = {**OUTLINE, "sections": [{"title": "A", "tabel": "tables/claims.csv"}]}
    make_tree(tmp_path, png, bad)
    with pytest.raises(ValueError, match="outline.json: sections\\[0\\] has unknown key.*tabel"):
        report.render_markdown(tmp_path / "90_summary")
    outline = tmp_path / "90_summary" / "outline.json"
    outline.write_text(json.dumps({"title": "T", "sections": [{"title": "A", "latex": True}]}))
    with pytest.raises(ValueError, match="asks for LaTeX but has no table"):
        report.write_latex_tables(tmp_path / "90_summary")
    outline.write_text(json.dumps({"title": "T", "sections": [{"title": "A", "table": "/x.csv"}]}))
    with pytest.raises(ValueError, match="sections\\[0\\].table must be null or a path inside"):
        report.render_markdown(tmp_path / "90_summary")


def test_latex_table_for_marked_sections_only(built):
    results, out, _ = built
    tables = results / "90_summary" / "tables"
    assert out["latex"] == [tables / "claims.tex"]
    assert not (tables / "big.tex").exists()
    tex = (tables / "claims.tex").read_text(encoding="utf-8")
    assert r"\begin{tabular}" in tex and r"\end{tabular}" in tex
    assert r"\caption{Claims versus evidence}" in tex
    assert r"\label{tab:claims}" in tex
    assert r"x\_y \& z & 12346" in tex  # cells escaped, floats formatted
    assert "0.1235" in tex


def test_html_hides_code_has_toc_and_embeds_images(built):
    results, out, _ = built
    page = out["html"].read_text(encoding="utf-8")
    assert out["html"] == results / "report.html"
    assert SOURCE_MARKER not in page  # code input hidden
    assert re.search(r"<body[^>]*>\s*<nav id=\"report-toc\"", page)
    assert "<title>Title</title>" in page
    nav = page[page.index('<nav id="report-toc"') : page.index("</nav>")]
    hrefs = [html.unescape(h) for h in re.findall(r'href="#([^"]*)"', nav)]
    texts = re.findall(r'<a href="#[^"]*">([^<]*)</a>', nav)
    assert texts == ["Title", "Section A", "Costs &amp; 50% users"]
    scan = report._scan(page)
    ids = {ident for _, ident, _ in scan.headings}
    # nbconvert's ids keep punctuation and percent-encode; the links use them as they are.
    assert hrefs == ["Title", "Section-A", "Costs-&-50%25-users"]
    assert all(h in ids for h in hrefs)
    assert len(scan.images) == 2  # the output PNG and the markdown image
    assert all(src and src.startswith("data:image/png;base64,") for src in scan.images)
    # nbconvert's template loads require.js, MathJax and mermaid from a CDN: stripped.
    assert "cdnjs" not in page and not re.search(r"<script[^>]*src=\"https?:", page)


def test_strip_remote_scripts_keeps_local_ones():
    page = (
        '<head><script src="https://cdn.x/require.js"></script>'
        '<script type="text/x-mathjax-config">MathJax.Hub.Config({});</script>'
        '<script type="module">import m from "https://cdn.x/mermaid.mjs";</script>'
        "<script>var local = 1;</script></head>"
    )
    assert report.strip_remote_scripts(page) == (
        '<head><script type="text/x-mathjax-config">MathJax.Hub.Config({});</script>'
        "<script>var local = 1;</script></head>"
    )


def test_build_prints_each_output_and_skips_pdf_without_browser(built):
    results, out, log = built
    assert out["pdf"] is None
    assert not (results / "report.pdf").exists()
    assert "report.pdf: skipped (no chromium/chrome on PATH)" in log.splitlines()
    for name in ("REPORT.md", "report.html", "claims.tex"):
        assert any(line.startswith(f"{name}: ") for line in log.splitlines())


def test_check_report_good_tree_is_clean(built):
    # The nested JSON dict in a table cell ('}}') is not a template marker.
    results, _, _ = built
    assert '{"a": {"b": 1}}' in (results / "REPORT.md").read_text(encoding="utf-8")
    assert report.check_report(results) == []


def test_check_report_finds_problems(built, tmp_path):
    results = Path(shutil.copytree(built[0], tmp_path / "results"))
    (results / "90_summary" / "figures" / "pareto.png").unlink()
    md = results / "REPORT.md"
    md.write_text(md.read_text(encoding="utf-8") + "\nvalue: {{ x }}\n[gone](#no-such-heading)\n"
                  "best: {best_model}, {mean:.4f}; fine: $n^{0.5}$, \\frac{a}{b}, "
                  '{"42": 0.1}\n')  # fmt: skip
    page = results / "report.html"
    page.write_text(
        page.read_text(encoding="utf-8").replace(
            "</body>", '<img src="figures/x.png"><script src="https://cdn.x/a.js"></script></body>'
        )
    )
    problems = report.check_report(results)
    assert "REPORT.md: unrendered template marker '{{'" in problems
    assert "REPORT.md: unrendered template marker '}}'" in problems
    fields = [p for p in problems if "unformatted field" in p]
    assert [p.split("'")[1] for p in fields] == ["{best_model}", "{mean:.4f}"]
    assert any("image '90_summary/figures/pareto.png' not found" in p for p in problems)
    assert "REPORT.md: link to missing heading '#no-such-heading'" in problems
    assert any("<img src='figures/x.png'> is not an embedded data: URI" in p for p in problems)
    assert "report.html: loads https://cdn.x/a.js (the report must read offline)" in problems
    assert len(problems) == 8
    md.unlink()
    assert f"{md}: missing" in report.check_report(results)


def test_render_pdf_returns_none_without_browser(built, tmp_path, no_browser):
    assert report.render_pdf(built[1]["html"], tmp_path / "r.pdf") is None
    assert not (tmp_path / "r.pdf").exists()


def _fake_browser(bin_dir: Path, script: str) -> None:
    bin_dir.mkdir()
    path = bin_dir / "chromium"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_render_pdf_with_browser_writes_atomically(built, tmp_path, monkeypatch):
    # The fake browser writes its argument list where --print-to-pdf says.
    _fake_browser(
        tmp_path / "bin",
        'for a in "$@"; do case "$a" in --print-to-pdf=*) out="${a#--print-to-pdf=}";; esac; done\n'
        'echo "$@" > "$out"\n',
    )
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    pdf = tmp_path / "out" / "report.pdf"
    assert report.render_pdf(built[1]["html"], pdf) == pdf
    args = pdf.read_text().split()
    assert args[:3] == ["--headless", "--no-sandbox", "--disable-gpu"]
    assert args[-1] == built[1]["html"].resolve().as_uri()
    assert [p.name for p in pdf.parent.iterdir()] == ["report.pdf"]  # no temp file left


def test_render_pdf_failure_raises_and_leaves_nothing(built, tmp_path, monkeypatch):
    _fake_browser(tmp_path / "bin", "echo boom >&2\nexit 3\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    (tmp_path / "out").mkdir()
    with pytest.raises(RuntimeError, match=r"wrote no PDF .*exit 3.*boom"):
        report.render_pdf(built[1]["html"], tmp_path / "out" / "report.pdf")
    assert list((tmp_path / "out").iterdir()) == []


def test_cli_exit_codes(tmp_path, png, no_browser, capsys):
    good = make_tree(tmp_path / "good", png)
    assert report.main([str(good)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "check: ok"
    bad_outline = {**OUTLINE, "intro": "Left over: {{ intro }}"}
    bad = make_tree(tmp_path / "bad", png, bad_outline)
    assert report.main([str(bad)]) == 1
    assert "REPORT.md: unrendered template marker '{{'" in capsys.readouterr().out
    assert report.main([str(tmp_path / "nowhere")]) == 2
    assert "outline.json: outline not found" in capsys.readouterr().err


def test_a_build_without_a_pdf_removes_an_earlier_pdf(tmp_path, png, no_browser, capsys):
    results = make_tree(tmp_path / "r", png)
    (results / "report.pdf").write_bytes(b"%PDF- an earlier run's")
    assert report.build_report(results)["pdf"] is None
    assert not (results / "report.pdf").exists()
    assert "report.pdf: removed the previous one" in capsys.readouterr().out
