"""Page checks for the built book: what a reader would see that a chapter should not show.

`dom_problems(html)` reads one page's DOM (as headless Chromium renders it, or the static HTML);
`layout_problems(metrics)` reads what Chromium measured when it laid the page out at 1280 and 800
pixels wide; `check_book(html_dir)` opens every page in Chromium and returns both, page by page.
tests/test_project.py imports this; `python tests/book_check.py BUILD_DIR` prints every problem of
every page and a count per rule (`--static` reads the HTML files without a browser).
"""
from __future__ import annotations

import ast, html, json, re, shutil, subprocess, sys, tempfile
from collections import Counter
from pathlib import Path

from bs4 import BeautifulSoup  # pydata-sphinx-theme, which jupyter-book brings, requires it

CODE_WIDTH = 88  # columns of a code cell (house style)
BLOCK_WIDTH = 80  # columns of a Markdown code block or diagram
WIDTHS = (1280, 800)  # the window widths at which Chromium lays out every page
CHROME_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
                '--disable-background-networking', '--disable-component-update', '--disable-sync']
OFFLINE = ['--host-resolver-rules=MAP * ~NOTFOUND']  # no network: a CDN script fails at once
NOT_PAGES = {'genindex', 'search', 'py-modindex'}

RULES = {  # in the order a report lists them: the rarer, the earlier
    'table as text': 'a paragraph starts with `|`: a Markdown table rendered as text',
    'plot without image': 'a code cell plots (matplotlib, plt., .plot(, imshow, show()) and shows no image',
    'stderr box': 'a stored stderr output (logs, warnings, progress bars)',
    'machine path': 'a path of the machine that ran the page (/tmp/, /work/, /home/..., site-packages)',
    'nbdev directive': 'a `#|` line is visible in a code cell',
    'raw maths': '`$$` or `$...$` maths left as text instead of typeset',
    'page scrolls sideways': 'Chromium: the page is wider than the window (at 1280 or 800 px)',
    'wide code line': f'a code cell line over {CODE_WIDTH} columns, or a Markdown code line over {BLOCK_WIDTH}',
    'code scrolls sideways': 'Chromium: a code box is wider than the column (at 1280 or 800 px)',
}

MACHINE_PATH = re.compile(r'(?<![\w.~/:-])(?:/tmp/|/work/|/root/|/home/[\w.-]+|/Users/[\w.-]+|/var/folders/'
                          r'|/private/var/)|site-packages|dist-packages|[A-Za-z]:\\Users\\')
RAW_MATHS = re.compile(r'\$\$|\$[^$\s][^$\n]*?(?:\\[A-Za-z]+|[_^]\{?\w)[^$\n]*?\$')
PLOTTING = re.compile(r'^plt\.|matplotlib|(?:^|\.)(?:plot|imshow|show)$|^plot_\w+$')


def _short(text: str, n: int = 70) -> str:
    text = ' '.join(text.split())
    return text if len(text) <= n else text[:n - 1] + '…'


def _calls(nodes, defs: dict, seen: set) -> list[str]:
    "Names of the functions `nodes` call when they run: not inside a `def` or `class`, unless that `def` is called."
    names, todo = [], list(nodes)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)): continue
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            names.append(name)
            if name in defs and name not in seen:  # a function of this cell: what it calls, it calls
                seen.add(name)
                names += _calls(defs[name].body, defs, seen)
        todo.extend(ast.iter_child_nodes(node))
    return names


def plots(source: str) -> bool:
    "Does this cell draw a figure when it runs (a call to matplotlib, `plt.`, `.plot(`, `imshow`, `show()`)?"
    code = '\n'.join(l for l in source.splitlines() if not l.lstrip().startswith(('%', '!')))
    try: tree = ast.parse(code)
    except SyntaxError:  # not Python: the calls that start a line
        return any(PLOTTING.search(n) for n in re.findall(r'^([\w.]+)\(', code, re.M))
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return any(PLOTTING.search(name) and name not in defs for name in _calls(tree.body, defs, set()))


def _article(soup):
    return soup.select_one('article.bd-article') or soup.select_one('main') or soup.body or soup


def dom_problems(page_html: str) -> list[tuple[str, str]]:
    "Every (rule, detail) one page's DOM breaks; see RULES."
    soup = BeautifulSoup(page_html, 'html.parser')
    art = _article(soup)
    for tag in art.select('script, style, .copybtn, .headerlink'): tag.decompose()
    problems = []
    for p in art.find_all('p'):
        text = p.get_text().strip()
        if text.startswith('|'): problems.append(('table as text', _short(text)))
    for cell in art.select('div.cell'):
        pre = cell.select_one('.cell_input pre')
        if pre is None: continue  # input removed from the page
        source = pre.get_text()
        first = next((l for l in source.splitlines() if l.strip() and not l.startswith('#')), '')
        if plots(source) and not cell.select('.cell_output img'):
            problems.append(('plot without image', _short(first)))
        for line in source.splitlines():
            if len(line) > CODE_WIDTH: problems.append(('wide code line', f'{len(line)} columns: {_short(line)}'))
            if line.lstrip().startswith('#|'): problems.append(('nbdev directive', _short(line)))
    for pre in art.select('div.highlight pre'):
        if pre.find_parent(class_='cell'): continue  # a Markdown code block or diagram
        for line in pre.get_text().splitlines():
            if len(line) > BLOCK_WIDTH: problems.append(('wide code line', f'{len(line)} columns: {_short(line)}'))
    for box in art.select('div.output.stderr, div.stderr'):
        problems.append(('stderr box', _short(box.get_text())))
    for tag in art.select('.cell_input'): tag.decompose()  # code may name example paths ('/tmp/r')
    text = art.get_text(' ')
    for m in MACHINE_PATH.finditer(text):
        problems.append(('machine path', _short(text[max(0, m.start() - 30):m.end() + 40])))
    for tag in art.select('pre, code, .math, .cell_output'): tag.decompose()
    prose = art.get_text(' ')
    for m in RAW_MATHS.finditer(prose):
        problems.append(('raw maths', _short(prose[max(0, m.start() - 20):m.end() + 20])))
    return problems


def layout_problems(metrics: dict) -> list[tuple[str, str]]:
    """Problems in what Chromium measured at each window width:
    {width: {'scroll': px, 'client': px, 'culprit': str, 'wide': [[widest line, scroll px, client px], ...]}}."""
    problems, boxes = [], {}
    for width, m in metrics.items():
        if m['scroll'] > m['client'] + 1:
            culprit = f' ({_short(m["culprit"], 60)})' if m.get('culprit') else ''
            problems.append(('page scrolls sideways', f'at {width} px: {m["scroll"]} px of content in a '
                                                      f'{m["client"]} px window{culprit}'))
        for line, scroll, client in m.get('wide', []):
            boxes.setdefault(line, []).append(f'{scroll} px in {client} at {width}')
    for line, where in boxes.items():  # one problem per code box, at every width it is too wide
        problems.append(('code scrolls sideways', f'{", ".join(where)}: {_short(line, 50)}'))
    return problems


# ---------------------------------------------------------------- Chromium

MEASURE = """<!doctype html><meta charset="utf-8"><body>%(frames)s<pre id="result">pending</pre><script>
window.addEventListener('load', () => {
  const out = {layout: {}};
  try {
    for (const f of document.querySelectorAll('iframe')) {
      const d = f.contentDocument, root = d.scrollingElement || d.documentElement, w = root.clientWidth;
      const wide = [...d.querySelectorAll('article div.highlight pre')]
        .filter(p => p.scrollWidth > p.clientWidth + 1)
        .map(p => [p.textContent.split('\\n').reduce((a, b) => b.length > a.length ? b : a, ''),
                   p.scrollWidth, p.clientWidth]);
      let culprit = '';
      if (root.scrollWidth > w + 1) {  // the outermost element that sticks out of the window
        const clipped = e => { for (let a = e.parentElement; a && a !== d.body; a = a.parentElement)
          if (getComputedStyle(a).overflowX !== 'visible') return true; return false; };
        const out_ = [...d.body.querySelectorAll('*')]
          .find(e => e.getBoundingClientRect().right > w + 1 && !clipped(e));
        if (out_) culprit = out_.tagName.toLowerCase() + (out_.className ? '.' + String(out_.className).split(' ')[0] : '')
                            + ': ' + (out_.textContent || '').trim().slice(0, 60);
      }
      out.layout[f.dataset.width] = {scroll: root.scrollWidth, client: w, wide, culprit};
    }
    out.dom = document.querySelector('iframe').contentDocument.documentElement.outerHTML;
  } catch (e) { out.error = String(e); }
  document.getElementById('result').textContent = JSON.stringify(out);
});
</script>"""


def chromium() -> str | None:
    return shutil.which('chromium') or shutil.which('chromium-browser')


def render(chrome: str, page: Path, workdir: Path, timeout: int = 120) -> tuple[str, dict]:
    """Open `page` in headless Chromium at each of WIDTHS (one launch: the page in an iframe per width);
    return its DOM after the page's JavaScript ran, and the layout measured at each width."""
    frames = ''.join(f'<iframe data-width="{w}" style="width:{w}px;height:900px;border:0" '
                     f'src="{page.resolve().as_uri()}"></iframe>' for w in WIDTHS)
    wrapper = workdir/f'measure-{page.stem}.html'
    wrapper.write_text(MEASURE % {'frames': frames})
    r = subprocess.run([chrome, *CHROME_FLAGS, *OFFLINE, f'--user-data-dir={workdir/"profile"}',
                        '--allow-file-access-from-files', '--window-size=1400,1000', '--dump-dom',
                        wrapper.as_uri()], capture_output=True, text=True, timeout=timeout)
    m = re.search(r'<pre id="result">(.*?)</pre>', r.stdout, re.S)
    if r.returncode != 0 or not m: raise RuntimeError(f'chromium failed on {page.name}: {r.stderr[-1500:]}')
    out = json.loads(html.unescape(m.group(1)))
    if 'error' in out: raise RuntimeError(f'measuring {page.name} failed: {out["error"]}')
    return out['dom'], out['layout']


def pages(html_dir: Path) -> list[Path]:
    return sorted(p for p in Path(html_dir).glob('*.html') if p.stem not in NOT_PAGES)


def check_book(html_dir: Path, names: list[str] | None = None, chrome: str | None = None,
               workdir: Path | None = None) -> dict[str, list[tuple[str, str]]]:
    "Every page's problems, {page: [(rule, detail), ...]}, pages as Chromium renders them; pages without any left out."
    chrome = chrome or chromium()
    if not chrome: raise RuntimeError('chromium is not installed: apt-get install chromium')
    html_dir = Path(html_dir)
    paths = [html_dir/f'{n}.html' for n in names] if names else pages(html_dir)
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            dom, layout = render(chrome, path, Path(workdir or tmp))
            if problems := dom_problems(dom) + layout_problems(layout): found[path.stem] = problems
    return found


def static_check(html_dir: Path) -> dict[str, list[tuple[str, str]]]:
    "The DOM rules on the HTML files as written (no browser, no layout)."
    found = {p.stem: dom_problems(p.read_text()) for p in pages(Path(html_dir))}
    return {k: v for k, v in found.items() if v}


def report(found: dict[str, list[tuple[str, str]]], limit: int | None = None) -> str:
    "Every problem (at most `limit` a page), page by page with its count per rule, then a count per rule."
    lines = []
    for page, problems in found.items():
        counts = Counter(rule for rule, _ in problems)
        lines.append(f'{page}: ' + ', '.join(f'{rule} {counts[rule]}' for rule in RULES if counts[rule]))
        problems = sorted(problems, key=lambda p: list(RULES).index(p[0]))
        lines += [f'  {rule}: {detail}' for rule, detail in problems[:limit]]
        if limit is not None and len(problems) > limit:
            lines.append(f'  ... and {len(problems) - limit} more (python tests/book_check.py nbs/_build lists all)')
    counts = Counter(rule for problems in found.values() for rule, _ in problems)
    lines.append('per rule: ' + (', '.join(f'{rule} {counts[rule]}' for rule in RULES if counts[rule]) or 'none'))
    return '\n'.join(lines)


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith('--')]
    build = Path(args[0] if args else 'nbs/_build')
    html_dir = build/'html' if (build/'html').is_dir() else build
    found = static_check(html_dir) if '--static' in argv else check_book(html_dir)
    print(report(found))
    return 1 if found else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
