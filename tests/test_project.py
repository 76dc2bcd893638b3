"""The frame every chapter grows in: notebooks and library in sync, every notebook runs, the book builds
and renders in a real browser, the two book configurations agree, the package installs cleanly."""
import json, os, re, shutil, subprocess, sys
from pathlib import Path

import pytest
import yaml

from minillm.pipeline import PHASES

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT/'nbs'
BIN = Path(sys.executable).parent
CHAPTERS = sorted(p.stem for p in NBS.glob('[0-9][0-9]_*.ipynb') if p.stem not in ('00_core', '99_main'))
BUILD = NBS/'_build'
PIPELINE_CHAPTERS = [Path(p.notebook).stem for p in PHASES]  # the chapters `minillm pipeline` runs with parameters


def run(cmd, cwd=ROOT, timeout=600, env=None):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def toc_files():
    toc = yaml.safe_load((NBS/'_toc.yml').read_text())
    def walk(entries):  # a chapter's sections (4.1 under 4) follow it
        for e in entries:
            yield e['file']
            yield from walk(e.get('sections', []))
    return [toc['root']] + [f for part in toc.get('parts', []) for f in walk(part['chapters'])]


def quarto_files():
    def walk(items):
        for it in items:
            if isinstance(it, str): yield Path(it).stem
            else: yield from walk(it.get('chapters', []))
    return list(walk(yaml.safe_load((ROOT/'_quarto.yml').read_text())['book']['chapters']))


def test_toc_and_quarto_list_the_same_chapters():
    assert toc_files() == quarto_files()
    for f in toc_files(): assert (NBS/f'{f}.ipynb').exists(), f'{f} is in the table of contents but missing'
    # every numbered notebook is a page of the book
    assert set(CHAPTERS) <= set(toc_files())


def test_notebooks_and_library_in_sync(tmp_path):
    "nbdev_export and nbdev_clean change nothing (run on a copy, so the working tree is untouched)."
    for f in ['settings.ini', 'setup.py']: shutil.copy2(ROOT/f, tmp_path/f)
    shutil.copytree(NBS, tmp_path/'nbs', ignore=shutil.ignore_patterns('_build', '.ipynb_checkpoints'))
    shutil.copytree(ROOT/'minillm', tmp_path/'minillm', ignore=shutil.ignore_patterns('__pycache__', '*.xz'))
    for cmd in (['nbdev_export'], ['nbdev_clean']):
        r = run([str(BIN/cmd[0])], cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
    changed = [str(p.relative_to(tmp_path)) for p in sorted(tmp_path.rglob('*'))
               if p.is_file() and p.suffix in ('.py', '.ipynb') and '__pycache__' not in p.parts
               and (not (ROOT/p.relative_to(tmp_path)).exists()
                    or (ROOT/p.relative_to(tmp_path)).read_bytes() != p.read_bytes())]
    assert changed == [], f'run nbdev_export and nbdev_clean, then commit: {changed}'


@pytest.mark.parametrize('name', CHAPTERS + ['index', '00_core'])
def test_notebook_skeleton(name):
    "Every chapter has the book's skeleton and is committed clean, with real outputs and no errors."
    path = NBS/f'{name}.ipynb'
    nb = json.loads(path.read_text())
    assert path.stat().st_size < 2_000_000, 'notebook too large: shrink images and outputs'
    cells = nb['cells']
    assert nb['metadata'].get('kernelspec', {}).get('language') == 'python', \
        'keep the kernelspec (the book highlights code with it): run the notebook with papermill -k python3'
    md = [''.join(c['source']) for c in cells if c['cell_type'] == 'markdown']
    code = [c for c in cells if c['cell_type'] == 'code']
    assert md and md[0].startswith('# '), 'the first cell is the H1 title'
    assert re.search(r'^> ', md[0], re.M), 'the title has a one-line `>` subtitle'
    for c in code:
        for o in c.get('outputs', []):
            assert o['output_type'] != 'error', f'error output committed: {o.get("evalue")}'
        assert c.get('execution_count') is None, 'run nbdev_clean'
    for block in re.findall(r'```[a-z]*\n(.*?)```', '\n'.join(md), re.S):
        for line in block.splitlines():
            assert len(line) <= 80, f'diagram or code line wider than 80 columns: {line!r}'
    if name[:2].isdigit() and name != '00_core':
        src = ''.join(code[0]['source'])
        assert src.startswith('#| default_exp'), 'first code cell: #| default_exp'
        assert 'remove-cell' in code[0].get('metadata', {}).get('tags', [])
        text = '\n'.join(md)
        assert 'TL;DR' in text, 'each chapter opens with a TL;DR'
        params = [c for c in code if 'parameters' in c.get('metadata', {}).get('tags', [])]
        if name in PIPELINE_CHAPTERS:
            assert len(params) == 1, 'one cell tagged parameters (papermill injects values after it)'
        assert any(c.get('outputs') for c in code), 'committed with real outputs'


@pytest.mark.parametrize('name', PIPELINE_CHAPTERS)
def test_papermill_reads_every_parameter(name):
    "papermill parses each line of the parameters cell (a stray `=` in a comment hides a parameter)."
    import nbformat
    from papermill.translators import PythonTranslator
    nb = nbformat.read(NBS/f'{name}.ipynb', as_version=4)
    cell = next(c for c in nb.cells if 'parameters' in c.metadata.get('tags', []))
    assigned = [l.split('=')[0].strip() for l in cell.source.splitlines() if re.match(r'^\w+\s*(:[^=]*)?=', l)]
    assert [p.name for p in PythonTranslator.inspect(cell)] == assigned


def test_every_notebook_executes(tmp_path):
    "nbdev_test runs every notebook top to bottom in a fresh kernel (cells marked slow are skipped)."
    r = run([str(BIN/'nbdev_test'), '--n_workers', '1', '--timing'], timeout=1500,
            env={'MINILLM_BOOK_DIR': os.environ.get('MINILLM_BOOK_DIR') or str(tmp_path/'book'),
                 'MPLBACKEND': 'Agg'})
    print(r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]


@pytest.fixture(scope='module')
def book():
    "Build the book once, warnings as errors, from the committed outputs."
    shutil.rmtree(BUILD, ignore_errors=True)
    r = run([str(BIN/'jupyter-book'), 'build', str(NBS), '-W', '-n', '--keep-going'], timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return BUILD/'html'


def test_book_builds_a_page_per_chapter_with_outputs(book):
    for f in toc_files():
        page = book/f'{f}.html'
        assert page.exists(), f'no page for {f}'
    for f in CHAPTERS:
        html = (book/f'{f}.html').read_text()
        assert 'cell_output' in html, f'{f}: stored outputs were not rendered'
    index = (book/'index.html').read_text()
    assert 'TL;DR' in index and 'SentencePiece tokenizer' in index


def _chromium():
    "Debian's chromium, or a skip here and a failure in CI (.ci/run exports CI=1 and installs it)."
    from book_check import chromium
    chrome = chromium()
    if not chrome:
        if os.environ.get('CI'): pytest.fail('chromium is not installed (.ci/run installs Debian\'s chromium)')
        pytest.skip('chromium is not installed here: apt-get install chromium (CI installs it, and fails without it)')
    return chrome


# the table of contents: each chapter under its number, in reading order (core is an unnumbered reference)
TOC_CHAPTERS = ['Corpus', 'Tokenizer', 'Counting', 'Model', 'Training', 'Generation', 'Pipeline', 'Export',
                'Benchmarks', 'Reliability']


def test_index_renders_in_a_real_browser(book, tmp_path):
    "Headless Chromium opens the built index: its title and table of contents render; a screenshot is kept."
    from book_check import CHROME_FLAGS, OFFLINE
    chrome = _chromium()
    url = (book/'index.html').as_uri()
    base = [chrome, *CHROME_FLAGS, *OFFLINE, f'--user-data-dir={tmp_path/"profile"}', '--window-size=1280,1000']
    dom = run(base + ['--dump-dom', url], timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    title = re.search(r'<title>(.*?)</title>', dom.stdout, re.S).group(1)
    assert 'minillm' in title
    nav = dom.stdout[dom.stdout.find('bd-sidebar'):]
    for number, chapter in enumerate(TOC_CHAPTERS, 1):
        assert re.search(rf'toctree-l1[^>]*>\s*<a[^>]*>\s*{number}\.[^<]*{chapter}', nav, re.I), \
            f'{number}. {chapter} missing from the TOC'
    assert re.search(r'toctree-l1[^>]*>\s*<a[^>]*>\s*Core', nav), 'the core reference is missing from the TOC'
    shot = book/'screenshot-index.png'
    r = run(base + [f'--screenshot={shot}', url], timeout=120)
    assert r.returncode == 0 and shot.exists() and shot.stat().st_size > 10_000


def test_every_page_renders_clean_in_a_real_browser(book, tmp_path):
    """Headless Chromium opens every page of the book at 1280 and 800 pixels wide; no page shows a table as
    text, a plot without its image, a stderr box, a machine path, an nbdev directive, untypeset maths, code
    wider than the column, or scrolls sideways (tests/book_check.py; `python tests/book_check.py nbs/_build`
    lists every problem)."""
    from book_check import check_book, report
    found = check_book(book, toc_files(), _chromium(), tmp_path)
    if found: pytest.fail('pages with problems:\n' + report(found, limit=12), pytrace=False)


# ---------------------------------------------------------------- the page checks, on small pages

def _page(body: str) -> str:
    return f'<html><head><title>t</title></head><body><nav>| not the article</nav><article class="bd-article">{body}</article></body></html>'


def _cell(source: str, output: str = '') -> str:
    "A code cell as MyST-NB renders it; `output` is the cell_output's inner HTML."
    code = source.replace('&', '&amp;').replace('<', '&lt;')
    out = f'<div class="cell_output docutils container">{output}</div>' if output else ''
    return (f'<div class="cell docutils container"><div class="cell_input docutils container"><div class="highlight-python '
            f'notranslate"><div class="highlight"><pre><span></span>{code}</pre></div></div></div>{out}</div>')


STDOUT = '<div class="output stream highlight-myst-ansi notranslate"><div class="highlight"><pre>{}</pre></div></div>'
STDERR = '<div class="output stderr highlight-myst-ansi notranslate"><div class="highlight"><pre>{}</pre></div></div>'
IMAGE = '<img alt="_images/x.png" src="_images/x.png" />'
PAGE_CASES = {  # rule: (a page that breaks it, a page that does not)
    'table as text': ('<p>| a | b |\n|---|---|\n| 1 | 2 |</p>',
                      '<table><tr><td>a | b</td></tr></table><p>a pipe | inside is fine</p>'),
    'plot without image': (_cell('fig, ax = plt.subplots()\nax.plot([1, 2])'),
                           _cell('fig, ax = plt.subplots()\nax.plot([1, 2])', IMAGE)
                           + _cell('def draw(x):\n    plt.plot(x)')  # defines, does not draw
                           + _cell('def show(x): print(x)\nshow(3)', STDOUT.format(3))),
    'stderr box': (_cell('train()', STDERR.format('epoch 1: loss 3.2')), _cell('train()', STDOUT.format('epoch 1'))),
    'machine path': (_cell('print(book_dir())', STDOUT.format('/tmp/tmpab12/book')),
                     _cell("cfg = PipelineConfig(run_dir='/tmp/r')", STDOUT.format('~/.cache/minillm'))
                     + '<p>see <a href="https://example.org/work/">the work/ folder</a> and data/tokenizer.model</p>'),
    'nbdev directive': (_cell('#| export\ndef f(): pass'), _cell('def f(): pass  # |x| is its size')),
    'raw maths': ('<p>the loss $$L = -\\log p$$ falls</p><p>and $x_i$ rises</p>',
                  '<div class="math notranslate nohighlight">\\[L = -\\log p\\]</div><p>it costs $5 or $10</p>'),
    'wide code line': (_cell('x = 1  # ' + 'w' * 85) + '<div class="highlight"><pre>' + 'd' * 81 + '</pre></div>',
                       _cell('x = 1  # ' + 'w' * 79) + '<div class="highlight"><pre>' + 'd' * 80 + '</pre></div>'),
}


@pytest.mark.parametrize('rule', PAGE_CASES)
def test_page_checks_catch_each_problem(rule):
    "Each page check fails its bad page (naming the rule) and passes its good one."
    from book_check import RULES, dom_problems
    assert rule in RULES
    bad, good = PAGE_CASES[rule]
    rules = [r for r, _ in dom_problems(_page(bad))]
    assert rules and set(rules) == {rule}, rules
    assert dom_problems(_page(good)) == []


def test_page_checks_list_every_problem_of_every_page():
    "The report names every page and every problem, with a count per rule, not just the first problem."
    from book_check import dom_problems, report
    found = {'01_corpus': dom_problems(_page(PAGE_CASES['stderr box'][0] * 2 + PAGE_CASES['table as text'][0])),
             '02_tokenizer': dom_problems(_page(PAGE_CASES['machine path'][0]))}
    text = report(found)
    assert text.count('  stderr box: epoch 1') == 2 and '01_corpus: table as text 1, stderr box 2' in text
    assert '02_tokenizer: machine path 1' in text and text.endswith('per rule: table as text 1, stderr box 2, machine path 1')
    assert report({}) == 'per rule: none'


def test_page_layout_checks_in_a_real_browser(tmp_path):
    "Chromium measures a page at 1280 and 800 px: a page wider than the window and a code box wider than its"
    " column are caught; a page of 88-column code is not."
    from book_check import layout_problems, render
    chrome = _chromium()
    css = '<style>pre { font: 12px monospace; overflow: auto; padding: 12px }</style>'
    wide = tmp_path/'wide.html'
    wide.write_text(_page(css + '<div style="width:1500px">a wide table</div><div class="highlight"><pre>'
                          + 'x' * 200 + '</pre></div>'))
    narrow = tmp_path/'narrow.html'
    narrow.write_text(_page(css + '<div class="highlight"><pre>' + 'x' * 88 + '</pre></div>'))
    rules = [rule for rule, _ in layout_problems(render(chrome, wide, tmp_path)[1])]
    assert rules.count('page scrolls sideways') == 2 and rules.count('code scrolls sideways') == 1
    dom, layout = render(chrome, narrow, tmp_path)
    assert 'x' * 88 in dom and layout_problems(layout) == []


def test_ci_runs_the_browser_check():
    "CI exports CI=1 before the tests, so that a missing Chromium fails the browser check there instead of skipping it."
    ci = (ROOT/'.ci'/'run').read_text()
    export, tests = re.search(r'^export CI=1\b', ci, re.M), re.search(r'^bash -c "\$tests"', ci, re.M)
    assert export and tests and export.start() < tests.start(), '.ci/run must `export CI=1` before it runs the tests'


def test_pip_check():
    r = run([sys.executable, '-m', 'pip', 'check'])
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli_version_and_help():
    import minillm
    r = run([str(BIN/'minillm'), '--version'])
    assert r.returncode == 0 and r.stdout.strip() == f'minillm {minillm.__version__}'
    r = run([str(BIN/'minillm'), '--help'])
    assert r.returncode == 0
    from minillm.core import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == 'command')
    assert sub.choices, 'no subcommands registered'
    for name in sub.choices:
        assert re.search(rf'^\s+{name}\b', r.stdout, re.M), f'{name} not listed in --help'
        assert re.search(rf'^\s+minillm {name}\b', r.stdout, re.M), f'no example for {name} in --help'
    r = run([sys.executable, '-m', 'minillm', '--no-such-option'])
    assert r.returncode == 1 and 'Traceback' not in r.stderr and 'minillm: error: ' in r.stderr


def _runtime_closure() -> set[str]:
    "Normalised names of the runtime requirements in settings.ini and everything they require in turn."
    import configparser
    from importlib.metadata import PackageNotFoundError, requires
    from packaging.requirements import Requirement
    norm = lambda n: re.sub(r'[-_.]+', '-', n).lower()
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT/'settings.ini')
    todo = [Requirement(r).name for r in cfg['DEFAULT']['requirements'].split()]
    seen = set()
    while todo:
        name = norm(todo.pop())
        if name in seen: continue
        seen.add(name)
        try: reqs = requires(name) or []
        except PackageNotFoundError: continue
        todo += [Requirement(r).name for r in reqs if 'extra ==' not in r]  # not the optional extras
    return seen


def test_every_import_the_pipeline_executes_is_a_runtime_requirement():
    "The chapters `minillm pipeline` runs import only the standard library, minillm and what `pip install .` brings."
    from importlib.metadata import packages_distributions
    from minillm.pipeline import PHASES
    dists, runtime = packages_distributions(), _runtime_closure()
    norm = lambda n: re.sub(r'[-_.]+', '-', n).lower()
    for phase in PHASES:
        nb = json.loads((NBS/phase.notebook).read_text())
        for cell in nb['cells']:
            if cell['cell_type'] != 'code': continue
            for mod in re.findall(r'^\s*(?:from|import)\s+(\w+)', ''.join(cell['source']), re.M):
                if mod in sys.stdlib_module_names or mod in ('minillm', '__future__'): continue
                owners = {norm(d) for d in dists.get(mod, [])}
                assert owners & runtime, f'{phase.notebook} imports {mod} ({owners or "not installed"}), which `pip install .` does not bring'


# ---------------------------------------------------------------- one source for every option

CONFIGS = {'01_corpus': 'minillm.corpus.CorpusConfig', '02_tokenizer': 'minillm.tokenizer.TokenizerConfig',
           '05_training': 'minillm.training.TrainConfig', '06_generation': 'minillm.generation.ValidateConfig'}
PAGE_SWITCHES = {'show_stats', 'show_benchmarks', 'show_demos', 'show_buildup'}  # what a page shows, not how a stage runs


def _config(path: str):
    import importlib
    module, name = path.rsplit('.', 1)
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize('name', PIPELINE_CHAPTERS)
def test_papermill_parameters_are_config_fields(name):
    "A pipeline chapter's parameters are fields of its command's config (plus the page's own switches), and the"
    " pipeline passes only parameters the chapter has."
    from dataclasses import fields
    import nbformat
    from papermill.translators import PythonTranslator
    from minillm.pipeline import PipelineConfig, phase_parameters
    nb = nbformat.read(NBS/f'{name}.ipynb', as_version=4)
    cell = next(c for c in nb.cells if 'parameters' in c.metadata.get('tags', []))
    params = {p.name for p in PythonTranslator.inspect(cell)}
    allowed = {f.name for f in fields(_config(CONFIGS[name]))} if name in CONFIGS else set()
    if name == '05_training': allowed.add('options')  # every TrainConfig option in one dict (checked below)
    assert params - PAGE_SWITCHES <= allowed, f'{name}: {sorted(params - PAGE_SWITCHES - allowed)} are no config fields'
    phase = next(p.name for p in PHASES if p.notebook == f'{name}.ipynb')
    passed = phase_parameters(phase, PipelineConfig())
    assert set(passed) <= params
    if 'options' in passed: assert set(passed['options']) <= {f.name for f in fields(_config(CONFIGS[name]))}


def test_every_option_comes_from_a_config():
    "Help texts and defaults are the config fields' comments and defaults (core.add_options), never written by hand."
    hand = [f'{p.name}:{i}' for p in sorted((ROOT/'minillm').glob('*.py')) if p.name not in ('core.py', 'bench.py')
            for i, line in enumerate(p.read_text().splitlines(), 1) if '(default' in line and 'help=' in line]
    assert hand == [], f'options with a hand-written default in their help: {hand}'
    from dataclasses import fields
    for path in list(CONFIGS.values()) + ['minillm.pipeline.PipelineConfig', 'minillm.generation.GenerateConfig',
                                         'minillm.generation.EvaluateConfig', 'minillm.export.ExportConfig',
                                         'minillm.export.ImportConfig']:
        from minillm.core import option_help
        cls = _config(path)
        assert set(option_help(cls)) == {f.name for f in fields(cls)}, f'{path}: every field needs a comment'


def test_the_unsafe_call_scan_covers_every_package_file():
    "tests/test_faults.py scans every file of the package for shells, eval, exec and unpickling, with no exceptions."
    from helpers import PACKAGE_FILES
    assert PACKAGE_FILES == sorted((ROOT/'minillm').rglob('*.py')) and len(PACKAGE_FILES) > 10
    scan = (ROOT/'tests'/'test_faults.py').read_text()
    assert 'assert unsafe_calls(PACKAGE_FILES) == []' in scan


def test_pyflakes_finds_nothing_in_the_package():
    "No unused import, undefined name or dead assignment in minillm/ (pyflakes is a development requirement)."
    r = run([sys.executable, '-m', 'pyflakes', str(ROOT/'minillm')])
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------- house style (STYLE.md)

EXPORTED = re.compile(r'^#\|\s*export\b')


def _defined(tree) -> set[str]:
    "Names a cell's top-level statements define: functions, classes, assigned names (`obj.attr = f` counts attr)."
    import ast
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
                names |= {n.attr for n in ast.walk(target) if isinstance(n, ast.Attribute)}
    return names


def _is_table(tree) -> bool:
    "One dataclass of one-line fields, such as a config: it reads as a table, whatever its length."
    import ast
    return (len(tree.body) == 1 and isinstance(cls := tree.body[0], ast.ClassDef)
            and any('dataclass' in ast.unparse(d) for d in cls.decorator_list)
            and all(isinstance(s, (ast.AnnAssign, ast.Expr)) for s in cls.body))


def style_problems(name: str) -> list[str]:
    "Exported cells of notebook `name` over 30 lines, and those not followed by a cell that uses what they define."
    import ast
    cells = [c for c in json.loads((NBS/f'{name}.ipynb').read_text())['cells'] if c['cell_type'] == 'code']
    problems = []
    for i, c in enumerate(cells):
        src = ''.join(c['source'])
        if not EXPORTED.match(src): continue
        tree, lines = ast.parse(src), [l for l in src.splitlines() if not l.startswith('#|')]
        if len(lines) > 30 and not _is_table(tree):
            problems.append(f'cell {c["id"]} has {len(lines)} lines: split it (a class can grow with @patch)')
        shown = []
        for d in cells[i + 1:]:
            if EXPORTED.match(''.join(d['source'])): break
            shown.append(''.join(d['source']))
        names = _defined(tree)
        if names and not any(re.search(rf'\b{re.escape(n)}\b', s) for n in names for s in shown):
            problems.append(f'cell {c["id"]} defines {", ".join(sorted(names))}, and no cell after it shows or tests them')
    return problems


@pytest.mark.parametrize('name', sorted(p.stem for p in NBS.glob('[0-9]*.ipynb')))
def test_house_style(name):
    "Exported cells stay small (30 lines at most) and each is followed by a cell that shows or tests what it defines."
    assert style_problems(name) == []


def test_every_command_prints_its_help(capsys):
    "`minillm COMMAND --help` works for every command (argparse formats help with %: a stray one broke it once)."
    from minillm.core import build_parser
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == 'command').choices
    assert {'train', 'pipeline', 'generate', 'validate'} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as e: parser.parse_args([name, '--help'])
        assert e.value.code == 0, name
        assert f'usage: minillm {name}' in capsys.readouterr().out
