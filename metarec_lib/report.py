"""The study's report from the executed summary notebook: `python -m metarec_lib.report RESULTS`.

`notebooks/90_summary.ipynb`, executed by papermill, leaves in `RESULTS/90_summary/`:
the executed notebook `90_summary.ipynb`, tables `tables/*.csv`, figures `figures/*.png` and
`outline.json`, which says what the report shows, in order:

    {"title": "...", "intro": "markdown",
     "sections": [{"title": "...", "text": "markdown", "table": "tables/claims.csv",
                   "figure": "figures/pareto.png", "latex": true}, ...]}

(`table`, `figure`, `text` and `latex` are optional; paths are relative to `90_summary/`.)
From these this module writes:

- `RESULTS/REPORT.md`: GitHub-renderable Markdown (contents, pipe tables, linked figures);
- `RESULTS/report.html`: the executed notebook as one self-contained HTML page, code hidden,
  images embedded, with a table of contents;
- `RESULTS/90_summary/tables/<stem>.tex` for sections marked `"latex": true` (booktabs);
- `RESULTS/report.pdf`, printed by headless Chromium/Chrome when one is on PATH.

`check_report` then looks for leftover template markers, missing figures and links, and HTML
images that are not embedded.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pandas as pd

from metarec_lib.io import atomic_write_text

SUMMARY = "90_summary"
OUTLINE = "outline.json"
MAX_TABLE_ROWS = 60
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
PDF_TIMEOUT_S = 120
# Jinja-style markers that a rendered document must not contain. A closing marker counts only
# after whitespace, as templates write it (`{{ x }}`), so a nested JSON dict (`{"a": {"b": 1}}`)
# in a table cell is not mistaken for one.
TEMPLATE_MARKERS = re.compile(r"\{\{|\{%|\s\}\}|\s%\}")
# A replacement field left by a string that lost its f-prefix (`{best_model}`, `{mean:.4f}`),
# looked for in REPORT.md's text: not after a backslash, ^, _ or a letter (LaTeX `x^{n}`,
# `\frac{a}{b}`) and not inside a JSON object (a key is quoted).
FORMAT_FIELD = re.compile(r"(?<![\\^_\w{}])\{[A-Za-z_]\w*(?:\.\w+)*(?:![rsa])?(?::[^{}\s]*)?\}")
_MD_LINK = re.compile(r"(!?)\[(?:[^\]\\]|\\.)*\]\((<[^>]+>|[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_MD_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.M)
_OUTLINE_KEYS = {"title", "intro", "sections"}
_SECTION_KEYS = {"title", "text", "table", "figure", "latex"}


# --------------------------------------------------------------------------- the outline


@dataclass(frozen=True)
class Section:
    title: str
    text: str
    table: str | None  # relative to the summary folder, POSIX separators
    figure: str | None
    latex: bool


@dataclass(frozen=True)
class Outline:
    title: str
    intro: str
    sections: tuple[Section, ...]


def _relative(value: Any, where: str, path: Path) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value
        or Path(value).is_absolute()
        or ".." in Path(value).parts
    ):
        raise ValueError(
            f"{path}: {where} must be null or a path inside {path.parent}, got {value!r}"
        )
    return Path(value).as_posix()


def read_outline(summary_dir: Path) -> Outline:
    """Read and validate `summary_dir/outline.json`; an unknown key is an error that names it."""
    path = Path(summary_dir) / OUTLINE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: outline not found (written by notebooks/90_summary)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    if unknown := set(raw) - _OUTLINE_KEYS:
        raise ValueError(
            f"{path}: unknown key(s) {sorted(unknown)}; expected {sorted(_OUTLINE_KEYS)}"
        )
    if not isinstance(raw.get("title"), str) or not raw["title"].strip():
        raise ValueError(f"{path}: 'title' must be a non-empty string")
    if not isinstance(raw.get("intro", ""), str):
        raise ValueError(f"{path}: 'intro' must be a string")
    if not isinstance(raw.get("sections"), list):
        raise ValueError(f"{path}: 'sections' must be a list")
    sections = []
    for i, sec in enumerate(raw["sections"]):
        where = f"sections[{i}]"
        if not isinstance(sec, dict):
            raise ValueError(f"{path}: {where} must be an object")
        if unknown := set(sec) - _SECTION_KEYS:
            raise ValueError(
                f"{path}: {where} has unknown key(s) {sorted(unknown)}; "
                f"expected {sorted(_SECTION_KEYS)}"
            )
        if not isinstance(sec.get("title"), str) or not sec["title"].strip():
            raise ValueError(f"{path}: {where}.title must be a non-empty string")
        if not isinstance(sec.get("text") or "", str):
            raise ValueError(f"{path}: {where}.text must be a string")
        if not isinstance(sec.get("latex", False), bool):
            raise ValueError(f"{path}: {where}.latex must be true or false")
        table = _relative(sec.get("table"), f"{where}.table", path)
        if sec.get("latex", False) and table is None:
            raise ValueError(f"{path}: {where} asks for LaTeX but has no table")
        sections.append(
            Section(
                title=sec["title"].strip(),
                text=sec.get("text") or "",
                table=table,
                figure=_relative(sec.get("figure"), f"{where}.figure", path),
                latex=bool(sec.get("latex", False)),
            )
        )
    return Outline(raw["title"].strip(), raw.get("intro", ""), tuple(sections))


def _existing(summary_dir: Path, rel: str, what: str) -> Path:
    path = Path(summary_dir) / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} named in {Path(summary_dir) / OUTLINE} not found")
    return path


def _read_table(summary_dir: Path, rel: str) -> tuple[Path, pd.DataFrame]:
    path = _existing(summary_dir, rel, "table")
    try:
        return path, pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise ValueError(f"{path}: not a readable CSV table ({exc})") from exc


# --------------------------------------------------------------------------- Markdown


def format_value(value: Any) -> str:
    """A table cell as text: floats to 4 significant digits (whole numbers from 1e4 up, so no
    exponent hides a large count), missing values empty."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.0f}" if math.isfinite(value) and abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def github_slug(text: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation removed, each space a '-'."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _unique_slugs(titles: Sequence[str]) -> list[str]:
    """GitHub suffixes repeated anchors with -1, -2, ... in document order."""
    seen: dict[str, int] = {}
    out = []
    for title in titles:
        slug = github_slug(title)
        if slug in seen:
            seen[slug] += 1
            slug = f"{slug}-{seen[slug]}"
        else:
            seen[slug] = 0
        out.append(slug)
    return out


def _md_cell(value: Any) -> str:
    return format_value(value).replace("\r", " ").replace("\n", " ").replace("|", r"\|")


def _md_text(text: str) -> str:
    """Text safe inside a link's [...]."""
    return text.replace("[", r"\[").replace("]", r"\]")


def _md_link(target: str) -> str:
    # A space ends a bare Markdown link target; the <...> form allows it.
    return f"<{target}>" if " " in target else target


def markdown_table(frame: pd.DataFrame, *, max_rows: int = MAX_TABLE_ROWS, link: str = "") -> str:
    """A pipe table (numbers right-aligned) of the first `max_rows` rows; when rows are cut, a
    note gives the full count and links to `link`."""
    types = pd.api.types
    numeric = [
        types.is_numeric_dtype(frame[c]) and not types.is_bool_dtype(frame[c])
        for c in frame.columns
    ]
    lines = [
        "| " + " | ".join(_md_cell(str(c)) for c in frame.columns) + " |",
        "|" + "|".join("---:" if num else "---" for num in numeric) + "|",
    ]
    for row in frame.head(max_rows).itertuples(index=False):
        lines.append("| " + " | ".join(_md_cell(v) for v in row) + " |")
    if len(frame) > max_rows:
        shown = Path(link).name if link else "the CSV file"
        where = f"[{shown}]({_md_link(link)})" if link else shown
        lines += ["", f"(first {max_rows} of {len(frame)} rows; full table: {where})"]
    return "\n".join(lines)


def render_markdown(summary_dir: Path, *, results_link: str = SUMMARY) -> str:
    """REPORT.md's text from `summary_dir/outline.json` and the tables and figures it names.

    Links are `results_link/<path>`, i.e. relative to the results folder, where REPORT.md lives.
    Raises FileNotFoundError naming the outline, table or figure that is missing.
    """
    summary_dir = Path(summary_dir)
    outline = read_outline(summary_dir)
    # Anchors are numbered over every heading in document order, headings inside texts too.
    titles, section_at = [outline.title, *_MD_HEADING.findall(outline.intro)], []
    for sec in outline.sections:
        section_at.append(len(titles))
        titles += [sec.title, *_MD_HEADING.findall(sec.text)]
    all_slugs = _unique_slugs(titles)
    slugs = [all_slugs[i] for i in section_at]
    parts = [f"# {outline.title}"]
    if outline.intro.strip():
        parts.append(outline.intro.strip())
    if outline.sections:
        toc = [
            f"- [{_md_text(s.title)}](#{slug})"
            for s, slug in zip(outline.sections, slugs, strict=True)
        ]
        parts.append("**Contents**\n\n" + "\n".join(toc))
    for sec in outline.sections:
        parts.append(f"## {sec.title}")
        if sec.text.strip():
            parts.append(sec.text.strip())
        if sec.table is not None:
            _, frame = _read_table(summary_dir, sec.table)
            parts.append(markdown_table(frame, link=f"{results_link}/{sec.table}"))
        if sec.figure is not None:
            _existing(summary_dir, sec.figure, "figure")
            parts.append(f"![{_md_text(sec.title)}]({_md_link(f'{results_link}/{sec.figure}')})")
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------- LaTeX

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Text safe inside LaTeX (pandas escapes the cells but not the caption)."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


def _stem(rel: str) -> str:
    name = Path(rel).name
    for suffix in (".csv.gz", ".csv"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def write_latex_tables(summary_dir: Path) -> list[Path]:
    """Write `<stem>.tex` (booktabs, caption = section title, label `tab:<stem>`) next to the CSV
    of every section marked `"latex": true`; returns the paths written."""
    summary_dir = Path(summary_dir)
    written = []
    for sec in read_outline(summary_dir).sections:
        if not sec.latex:
            continue
        csv, frame = _read_table(summary_dir, sec.table)  # type: ignore[arg-type]
        stem = _stem(csv.name)
        tex = frame.to_latex(
            index=False,
            escape=True,
            na_rep="",
            float_format=format_value,
            caption=latex_escape(sec.title),
            label=f"tab:{stem}",
        )
        written.append(atomic_write_text(csv.with_name(f"{stem}.tex"), tex))
    return written


# --------------------------------------------------------------------------- HTML


class _Scan(HTMLParser):
    """Collects h1/h2 headings with ids, <img> sources and the visible text of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.headings: list[tuple[int, str, str]] = []  # (level, id, text)
        self.images: list[str | None] = []
        self.text: list[str] = []
        self._heading: tuple[int, str] | None = None
        self._heading_text: list[str] = []
        self._skip = 0  # inside <script>/<style>, or a heading's '¶' anchor link

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("script", "style") or (tag == "a" and "anchor-link" in (a.get("class") or "")):
            self._skip += 1
        elif tag in ("h1", "h2") and a.get("id"):
            self._heading, self._heading_text = (int(tag[1]), a["id"] or ""), []
        elif tag == "img":
            self.images.append(a.get("src"))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "a") and self._skip:
            self._skip -= 1
        elif tag in ("h1", "h2") and self._heading is not None:
            level, ident = self._heading
            self.headings.append((level, ident, " ".join("".join(self._heading_text).split())))
            self._heading = None

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        self.text.append(data)
        if self._heading is not None:
            self._heading_text.append(data)


def _scan(page: str) -> _Scan:
    scan = _Scan()
    scan.feed(page)
    scan.close()
    return scan


def _toc_html(headings: Sequence[tuple[int, str, str]]) -> str:
    # nbconvert's ids keep punctuation and are already percent-encoded ("Costs-&-50%25-users"),
    # as are the hrefs of its own '¶' links; a browser matches the fragment as written first.
    items = "".join(
        f'<li style="margin-left:{(level - 1) * 1.5}em">'
        f'<a href="#{html.escape(ident)}">{html.escape(text)}</a>'
        "</li>"
        for level, ident, text in headings
    )
    return (
        '\n<nav id="report-toc" style="max-width:1200px;margin:1em auto;padding:0 1em;'
        'font-family:sans-serif"><strong>Contents</strong>'
        f'<ul style="list-style:none;padding-left:0">{items}</ul></nav>\n'
    )


def render_html(executed_notebook: Path, out: Path) -> Path:
    """One self-contained HTML page from the executed notebook: code and prompts hidden, images
    embedded as data: URIs, a table of contents of its h1/h2 headings after <body>."""
    from nbconvert import HTMLExporter  # slow import; only this function needs it

    executed_notebook = Path(executed_notebook)
    if not executed_notebook.is_file():
        raise FileNotFoundError(f"{executed_notebook}: executed notebook not found")
    exporter = HTMLExporter(
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        embed_images=True,  # markdown images; outputs already carry base64 PNGs
    )
    # from_filename passes the notebook's folder, against which markdown images are resolved.
    page, _ = exporter.from_filename(str(executed_notebook))
    page = strip_remote_scripts(page)
    headings = _scan(page).headings
    if headings:
        body = re.search(r"<body[^>]*>", page)
        if body is None:
            raise ValueError(f"{executed_notebook}: nbconvert's HTML has no <body> tag")
        page = page[: body.end()] + _toc_html(headings) + page[body.end() :]
        title = html.escape(next((t for lvl, _, t in headings if lvl == 1), headings[0][2]))
        page = re.sub(r"<title>.*?</title>", f"<title>{title}</title>", page, count=1, flags=re.S)
    return atomic_write_text(out, page)


_REMOTE_SCRIPT = re.compile(
    r"<script\b[^>]*\bsrc=[\"']https?://[^>]*>\s*</script>"  # require.js, MathJax
    r"|<script\b[^>]*>(?:(?!</script>).)*?\bhttps?://(?:(?!</script>).)*?</script>",  # mermaid
    re.S | re.I,
)


def strip_remote_scripts(page: str) -> str:
    """Drop the scripts nbconvert's template loads from a CDN (require.js, MathJax, mermaid):
    the report has no widgets, formulas or diagrams, and it must read offline from one file."""
    return _REMOTE_SCRIPT.sub("", page)


# --------------------------------------------------------------------------- PDF


def find_browser() -> str | None:
    """The first headless-capable browser on PATH, or None."""
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    return None


def render_pdf(html_path: Path, pdf: Path) -> Path | None:
    """Print `html_path` to `pdf` with headless Chromium/Chrome; None when no browser is on PATH.

    The browser writes a temporary file that is renamed into place, so a failed run never leaves
    a stale or half-written PDF. Raises RuntimeError when the browser fails or writes nothing.
    """
    browser = find_browser()
    if browser is None:
        return None
    html_path, pdf = Path(html_path), Path(pdf)
    if not html_path.is_file():
        raise FileNotFoundError(f"{html_path}: HTML to print not found")
    pdf.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{pdf.name}.", suffix=".tmp", dir=pdf.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # so that "written" means the browser wrote it
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--print-to-pdf={tmp}",
        html_path.resolve().as_uri(),
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PDF_TIMEOUT_S)
        if not tmp.is_file() or tmp.stat().st_size == 0:
            tail = (done.stderr or done.stdout).strip()[-500:]
            raise RuntimeError(
                f"{browser} wrote no PDF for {html_path} (exit {done.returncode}): {tail}"
            )
        os.replace(tmp, pdf)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{browser} took over {PDF_TIMEOUT_S} s to print {html_path}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return pdf


# --------------------------------------------------------------------------- build and check


def build_report(results_dir: Path) -> dict[str, Path | list[Path] | None]:
    """Write REPORT.md, report.html, the LaTeX tables and (with a browser) report.pdf under
    `results_dir`; prints one line per output. Returns {"html", "markdown", "pdf", "latex"}."""
    results_dir = Path(results_dir)
    summary_dir = results_dir / SUMMARY
    markdown = atomic_write_text(results_dir / "REPORT.md", render_markdown(summary_dir))
    print(f"REPORT.md: {markdown}")
    latex = write_latex_tables(summary_dir)
    for path in latex:
        print(f"{path.name}: {path}")
    page = render_html(summary_dir / f"{SUMMARY}.ipynb", results_dir / "report.html")
    print(f"report.html: {page}")
    pdf: Path | None = None
    if find_browser() is None:
        print("report.pdf: skipped (no chromium/chrome on PATH)")
    else:
        try:
            pdf = render_pdf(page, results_dir / "report.pdf")
            print(f"report.pdf: {pdf}")
        except RuntimeError as exc:  # the PDF is a convenience copy; the HTML is the report
            print(f"report.pdf: failed ({exc})")
    if pdf is None and (results_dir / "report.pdf").exists():
        (results_dir / "report.pdf").unlink()  # an earlier run's: it would not match the HTML
        print("report.pdf: removed the previous one (it shows earlier results)")
    return {"html": page, "markdown": markdown, "pdf": pdf, "latex": latex}


def _markers(text: str, name: str) -> list[str]:
    found = sorted({m.group(0).strip() for m in TEMPLATE_MARKERS.finditer(text)})
    return [f"{name}: unrendered template marker {m!r}" for m in found]


def _format_fields(text: str, name: str) -> list[str]:
    found = sorted({m.group(0) for m in FORMAT_FIELD.finditer(text)})
    return [f"{name}: unformatted field {m!r} (a string without its f-prefix?)" for m in found]


def check_report(results_dir: Path) -> list[str]:
    """Problems with the built report, one line each ([] when none): template markers left in
    REPORT.md or report.html, Markdown images, links or anchors that lead nowhere, HTML images
    that are not embedded data: URIs and scripts loaded from the network."""
    results_dir = Path(results_dir)
    problems: list[str] = []
    md_path, html_path = results_dir / "REPORT.md", results_dir / "report.html"
    if not md_path.is_file():
        problems.append(f"{md_path}: missing")
    else:
        text = md_path.read_text(encoding="utf-8")
        problems += _markers(text, md_path.name) + _format_fields(text, md_path.name)
        anchors = set(_unique_slugs(_MD_HEADING.findall(text)))
        for bang, target in _MD_LINK.findall(text):
            target = target.strip("<>")
            kind = "image" if bang else "link"
            if target.startswith("#"):
                if target[1:] not in anchors:
                    problems.append(f"{md_path.name}: link to missing heading {target!r}")
            elif not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # a URL is not checked
                if not (results_dir / unquote(target.split("#")[0])).exists():
                    problems.append(f"{md_path.name}: {kind} {target!r} not found in {results_dir}")
    if not html_path.is_file():
        problems.append(f"{html_path}: missing")
    else:
        page = html_path.read_text(encoding="utf-8")
        scan = _scan(page)
        problems += _markers("".join(scan.text), html_path.name)
        for src in re.findall(r"<script\b[^>]*\bsrc=[\"'](https?://[^\"']+)", page, re.I):
            problems.append(f"{html_path.name}: loads {src} (the report must read offline)")
        for src in scan.images:
            if not (src or "").startswith("data:"):
                problems.append(f"{html_path.name}: <img src={src!r}> is not an embedded data: URI")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metarec_lib.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("results", type=Path, help="the results folder (holds 90_summary/)")
    args = parser.parse_args(argv)
    try:
        build_report(args.results)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problems = check_report(args.results)
    for line in problems:
        print(line)
    print(f"check: {len(problems)} problem(s)" if problems else "check: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
