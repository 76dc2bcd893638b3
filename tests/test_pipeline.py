"""Chapter 7, pipeline: the papermill runner on stand-in notebooks (every exit code, the resume prompt,
argument and prerequisite errors), real chapter failures, and one end-to-end run of the real chapters."""
import builtins, http.server, json, os, queue, re, shutil, subprocess, sys, threading, time
from pathlib import Path

import pytest
from conftest import local_server  # a mirror on 127.0.0.1

import minillm.pipeline as pl
from minillm.core import ExitCode, MinillmError, main
from minillm.testing import bundled_text, run_cli

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT/'nbs'


@pytest.fixture(scope='session')
def chapters():
    "The real chapter notebooks the pipeline runs: a missing one fails the tests that need it, never skips them."
    missing = [p.notebook for p in pl.PHASES if not (NBS/p.notebook).exists()]
    assert not missing, f'the pipeline runs chapters that nbs/ does not have: {missing}'
    return NBS


needs_chapters = pytest.mark.usefixtures('chapters')  # a test of the real chapters; it fails if they are not all there
FAST = ['--min-free-disk', '0.01']


@pytest.fixture(scope='module')
def standins(tmp_path_factory):
    return pl.make_standin_notebooks(tmp_path_factory.mktemp('standin')/'nbs')


def mixed_notebooks(folder, real=(), fail=''):
    "Stand-in notebooks, with the phases named in `real` replaced by the real chapters."
    folder = pl.make_standin_notebooks(folder, fail=fail)
    for p in pl.PHASES:
        if p.name in real: shutil.copy(NBS/p.notebook, folder/p.notebook)
    return folder


# ---------------------------------------------------------------- the runner on stand-in notebooks

def test_standin_run_report_and_skips(tmp_path, standins, monkeypatch):
    run = tmp_path/'run'
    code, out, err = run_cli(['pipeline', '--run-dir', run, '--notebooks', standins, '--epochs', 3, *FAST])
    assert code == 0, err
    for p in pl.PHASES: assert (run/'notebooks'/p.notebook).exists()
    assert out.count('(started 20') == 5 and out.count(' done in ') == 5
    assert f'report: {run}/report.md' in out and 'sample: To be or not' in out
    s = json.loads((run/'summary.json').read_text())
    assert s['config']['epochs'] == 3 and s['training'] == {'val_loss': 3.2, 'epochs': 3}
    assert set(s['phase_seconds']) == {p.name for p in pl.PHASES} and s['validation']['passed'] is True
    assert s['versions']['torch'] and s['versions']['python']
    report = (run/'report.md').read_text()
    assert '## Samples' in report and 'To be or not' in report and '| epochs | 3 |' in report
    # the executed notebook records the injected parameters
    nb = json.loads((run/'notebooks'/'05_training.ipynb').read_text())
    assert any('injected-parameters' in c['metadata'].get('tags', []) and '"epochs": 3' in ''.join(c['source'])
               for c in nb['cells'])
    # a second run: checkpoints exist and there is no terminal, so it refuses ...
    monkeypatch.setattr(pl, '_interactive', lambda: False)
    code, out, err = run_cli(['pipeline', '--run-dir', run, '--notebooks', standins, *FAST])
    assert code == 1 and 'no terminal to ask; pass --resume' in err and '--force-restart' in err
    # ... and with --resume, corpus and tokenizer are skipped because their inputs did not change
    code, out, err = run_cli(['pipeline', '--run-dir', run, '--notebooks', standins, '--resume', *FAST])
    assert code == 0, err
    assert 'corpus: skipped (outputs in' in out and 'tokenizer: skipped' in out
    assert json.loads((run/'summary.json').read_text())['skipped_phases'] == ['corpus', 'tokenizer']


def test_failure_in_a_phase_maps_to_its_exit_code(tmp_path):
    nbs = pl.make_standin_notebooks(tmp_path/'nbs', fail='model')
    code, out, err = run_cli(['pipeline', '--run-dir', tmp_path/'run', '--notebooks', nbs, *FAST])
    assert code == ExitCode.TRAINING
    nb = tmp_path/'run'/'notebooks'/'04_model.ipynb'
    assert err.strip() == (f'minillm pipeline: error: stand-in model failure; nothing to do (executed notebook: '
                           f'{nb})')
    assert nb.exists() and 'Traceback' not in err and not (tmp_path/'run'/'notebooks'/'05_training.ipynb').exists()


def test_a_missing_package_in_a_chapter_is_a_usage_error_with_the_install_command(tmp_path):
    "A chapter that imports a package the install lacks fails as a missing prerequisite (exit 1), not as its stage."
    nbs = pl.make_standin_notebooks(tmp_path/'nbs')
    pl.make_notebook(nbs/'01_corpus.ipynb', "out_dir = ''", 'import no_such_package_xyz')
    code, out, err = run_cli(['pipeline', '--run-dir', tmp_path/'run', '--notebooks', nbs, *FAST])
    assert code == ExitCode.USAGE, err
    assert "needs the Python package 'no_such_package_xyz', which is not installed" in err
    assert '-m pip install no_such_package_xyz' in err and err.count('\n') == 1 and 'Traceback' not in err

def test_run_notebook_errors(tmp_path):
    pl.check_kernel()
    pl.make_notebook(tmp_path/'a.ipynb', 'x = 1', 'raise ValueError(f"bad x={x}")')
    with pytest.raises(MinillmError) as e: pl.run_notebook(tmp_path/'a.ipynb', tmp_path/'o.ipynb', {'x': 7}, 3, quiet=True)
    assert e.value.exit_code == 3 and str(e.value) == f'ValueError: bad x=7 (executed notebook: {tmp_path/"o.ipynb"})'
    pl.make_notebook(tmp_path/'b.ipynb', 'x = 1', 'raise KeyboardInterrupt')
    with pytest.raises(MinillmError) as e: pl.run_notebook(tmp_path/'b.ipynb', tmp_path/'p.ipynb', {}, 4, quiet=True)
    assert e.value.exit_code == ExitCode.INTERRUPTED and '--resume' in str(e.value)


def test_output_streams_while_the_notebook_runs(tmp_path, capfd):
    "Each line reaches the console when the kernel prints it, not when the notebook ends."
    import time
    pl.check_kernel()
    pl.make_notebook(tmp_path/'s.ipynb', 'n = 2', "import time\nfor i in range(n): print('tick', i, flush=True); time.sleep(1)")
    seen = []
    class Console:
        def write(self, s): seen.append((time.perf_counter(), s))
        def flush(self): pass
    old, sys.stdout = sys.stdout, Console()
    try: pl.run_notebook(tmp_path/'s.ipynb', tmp_path/'o.ipynb', {}, 2); end = time.perf_counter()
    finally: sys.stdout = old
    ticks = [t for t, s in seen if 'tick' in s]
    assert len(ticks) == 2 and end - ticks[0] > 0.8


# ---------------------------------------------------------------- resume prompt (no kernels: notebooks recorded)

@pytest.fixture
def recorded(tmp_path, standins, monkeypatch):
    "A run directory with checkpoints; `run_notebook` only records each phase's parameters."
    run = tmp_path/'run'; (run/'train'/'checkpoints'/'last').mkdir(parents=True)
    calls = {}
    def fake(src, dest, params, code, cwd=None, quiet=False):
        calls[Path(src).stem] = params
        if 'report_path' in params: Path(params['report_path']).write_text('{"passed": true}')
    monkeypatch.setattr(pl, 'run_notebook', fake)
    return run, calls


@pytest.mark.parametrize('answer, code', [('y', 0), ('yes', 0), ('n', 1), ('', 1)])
def test_resume_prompt_on_a_terminal(recorded, standins, monkeypatch, answer, code):
    run, calls = recorded
    asked = []
    monkeypatch.setattr(pl, '_interactive', lambda: True)
    monkeypatch.setattr(builtins, 'input', lambda q: asked.append(q) or answer)
    got, out, err = run_cli(['pipeline', '--run-dir', run, '--notebooks', standins, *FAST])
    assert asked == ['Found existing checkpoints. Resume training? [y/N] ']
    assert got == code
    if code == 0: assert calls['05_training']['options']['resume'] is True and calls['05_training']['options']['force_restart'] is False
    else: assert not calls and 'not resuming' in err and '--force-restart' in err


@pytest.mark.parametrize('flag', ['--resume', '--force-restart'])
def test_resume_flags_need_no_terminal(recorded, standins, monkeypatch, flag):
    run, calls = recorded
    monkeypatch.setattr(pl, '_interactive', lambda: False)
    monkeypatch.setattr(builtins, 'input', lambda q: pytest.fail('asked without a terminal'))
    code, out, err = run_cli(['pipeline', '--run-dir', run, '--notebooks', standins, flag, *FAST])
    assert code == 0, err
    assert calls['05_training']['options'][flag.strip('-').replace('-', '_')] is True


def test_resume_refused_without_terminal(recorded, standins, monkeypatch):
    run, calls = recorded
    monkeypatch.setattr(pl, '_interactive', lambda: False)
    code, out, err = run_cli(['pipeline', '--run-dir', run, '--notebooks', standins, *FAST])
    assert code == 1 and not calls
    assert err.strip() == (f'minillm pipeline: error: found existing checkpoints in {run}/train/checkpoints and no '
                           'terminal to ask; pass --resume to continue training or --force-restart to start over')
    code, out, err = run_cli(['pipeline', '--run-dir', run, '--notebooks', standins, '--resume', '--force-restart', *FAST])
    assert code == 1 and 'exclude each other' in err


def test_interrupt_exits_130(tmp_path, standins, monkeypatch):
    def interrupted(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(pl, 'run_notebook', interrupted)
    code, out, err = run_cli(['pipeline', '--run-dir', tmp_path/'run', '--notebooks', standins, *FAST])
    assert code == 130 and 'interrupted during corpus' in err and '--resume' in err


def test_parameters_reach_the_phases(recorded, standins):
    run, calls = recorded
    code, out, err = run_cli(['pipeline', '--run-dir', run, '--notebooks', standins, '--force-restart', '--epochs', 5,
                              '--batch-size', 8, '--learning-rate', 1e-3, '--vocab-size', 300, '--books', '11,12',
                              '--mirror', 'http://127.0.0.1:9', '--device', 'cpu', '--max-time', '10m',
                              '--model', 'nano', '--validation-param', 'min_word_fraction=0.9', *FAST])
    assert code == 0, err
    r = str(run.resolve())
    assert calls['01_corpus'] == dict(out_dir=f'{r}/corpus', books='11,12', mirror='http://127.0.0.1:9', files=None,
                                      show_demos=False)
    assert calls['02_tokenizer'] == dict(corpus_dir=f'{r}/corpus', out_dir=f'{r}/data', vocab_size=300, show_stats=False,
                                         show_demos=False)
    assert calls['04_model'] == dict(show_benchmarks=False)
    train = calls['05_training']
    assert (train['data_dir'], train['out_dir']) == (f'{r}/data', f'{r}/train')
    given = dict(epochs=5, batch_size=8, learning_rate=1e-3, model='nano', device='cpu', max_time='10m', resume=False,
                 force_restart=True)
    assert {k: train['options'][k] for k in given} == given
    # every training option reaches chapter 5, the defaults too: nothing the pipeline trains with is hidden
    assert train['options'] == {**pl.training_options(pl.PipelineConfig()), **given}
    assert calls['06_generation'] == dict(checkpoint_dir=f'{r}/train', data_dir=f'{r}/data', corpus_dir=f'{r}/corpus',
                                          report_path=f'{r}/validation.json', min_word_fraction=0.9)


# ---------------------------------------------------------------- arguments and prerequisites

@pytest.mark.parametrize('args, message', [
    (['--no-such-option'], 'unrecognized arguments: --no-such-option'),
    (['--epochs'], 'argument --epochs: expected one argument'),
    (['--epochs', 'many'], "argument --epochs: not a number: 'many'"),
    (['--learning-rate', '1e-3x'], "argument --learning-rate: not a number: '1e-3x'"),
    (['--validation-param', 'oops'], "'oops' is not NAME=VALUE"),
])
def test_argument_errors(args, message, capsys):
    with pytest.raises(SystemExit) as e: main(['pipeline', *args])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith('minillm pipeline: error: ') and message in err
    assert err.count('\n') == 1 and err.endswith('see `minillm pipeline --help`\n')  # one line, no usage summary
    assert 'Traceback' not in err


def test_bad_time_budget_is_a_usage_error(tmp_path, capsys):
    assert main(['pipeline', '--max-time', 'soon', '--run-dir', str(tmp_path/'run')]) == 1
    assert 'bad duration' in capsys.readouterr().err
    assert not (tmp_path/'run').exists()  # refused before anything ran


def test_argument_error_in_a_real_process(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'minillm', 'pipeline', '--epochs', 'x'], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 1 and 'minillm pipeline: error: ' in r.stderr and 'Traceback' not in r.stderr


def test_help_shows_defaults_and_examples(capsys):
    with pytest.raises(SystemExit) as e: main(['pipeline', '--help'])
    out = ' '.join(capsys.readouterr().out.split())
    assert e.value.code == 0
    d = pl.PipelineConfig()
    defaults = [f'(default: {v})' for v in (d.epochs, d.batch_size, d.learning_rate, d.run_dir, d.min_free_disk,
                                            d.vocab_size, d.device, d.warmup, d.schedule, d.max_time)]
    for text in defaults + ['--resume', '--force-restart', '--skip-corpus', '--books',
                 '--mirror', '--max-time', '--device', 'minillm pipeline --epochs 5', 'minillm pipeline --run-dir runs/quick --resume']:
        assert text in out, text


@pytest.mark.parametrize('setup, args, message', [
    (None, ['--min-free-disk', '100000'], 'not enough free disk'),
    ('file', [], 'run directory'),
    (None, ['--notebooks', '/nonexistent'], 'chapter notebooks not found in /nonexistent'),
    ('package', [], 'missing Python packages: no_such_package_xyz; install them with'),
    ('python', [], 'is too old: minillm needs 3.10 or newer'),
    ('kernel', [], 'no Jupyter kernel for the notebooks'),
    ('skip', ['--skip-corpus'], '--skip-corpus: no intact corpus'),
])
def test_prerequisites(setup, args, message, tmp_path, standins, monkeypatch):
    run = tmp_path/'run'
    if setup == 'file': run.write_text('not a directory')
    if setup == 'package': monkeypatch.setattr(pl, 'REQUIRED_PACKAGES', ['numpy', 'no_such_package_xyz'])
    if setup == 'python': monkeypatch.setattr(sys, 'version_info', (3, 9, 0))
    if setup == 'kernel':
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
        def missing(self, name): raise NoSuchKernel(name)
        monkeypatch.setattr(KernelSpecManager, 'get_kernel_spec', missing)
    ran = []
    monkeypatch.setattr(pl, 'run_notebook', lambda *a, **k: ran.append(a))
    code, out, err = run_cli(['pipeline', '--run-dir', run, '--notebooks', standins, *FAST, *args])
    assert code == 1 and message in err and not ran, err
    assert err.count('\n') == 1 and 'Traceback' not in err


# ---------------------------------------------------------------- the real chapters

BOOK = None

def tiny_book(lines: int = 1000) -> bytes:
    "About `lines` lines of the bundled Shakespeare, as one plain-text book."
    return '\n'.join(bundled_text().splitlines()[:lines]).encode()


class Mirror(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args): pass
    def do_GET(self):
        body = tiny_book() if self.path == '/cache/epub/1/pg1.txt' else b'not found'
        self.send_response(200 if body != b'not found' else 404)
        self.send_header('Content-Type', 'text/plain'); self.send_header('Content-Length', str(len(body)))
        self.end_headers(); self.wfile.write(body)


@pytest.fixture(scope='module')
def mirror():
    with local_server(Mirror) as url: yield url


@pytest.fixture(autouse=True)
def download_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('MINILLM_CACHE', str(tmp_path/'cache'))  # the kernels inherit it


def closed_port() -> int:
    import socket
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def test_unreachable_mirror_is_exit_2(tmp_path):
    nbs = mixed_notebooks(tmp_path/'nbs', real={'corpus'})
    mirror = f'http://127.0.0.1:{closed_port()}'
    code, out, err = run_cli(['pipeline', '--run-dir', tmp_path/'run', '--notebooks', nbs, '--books', 1, '--mirror', mirror, *FAST])
    assert code == ExitCode.CORPUS, err
    last = err.strip().splitlines()[-1]  # before it: what the notebook itself printed on stderr
    assert last.startswith('minillm pipeline: error: cannot reach') and mirror in last
    assert last.endswith(f'(executed notebook: {tmp_path}/run/notebooks/01_corpus.ipynb)')


@pytest.fixture(scope='module')
def prepared(tmp_path_factory, mirror):
    "A run directory with a real tiny corpus and real token shards (chapters 1 and 2; stand-ins after them)."
    tmp = tmp_path_factory.mktemp('prepared')
    nbs = mixed_notebooks(tmp/'nbs', real={'corpus', 'tokenizer'})
    env = dict(os.environ, MINILLM_CACHE=str(tmp/'cache'))
    r = subprocess.run([sys.executable, '-m', 'minillm', 'pipeline', '--run-dir', str(tmp/'run'), '--notebooks', str(nbs),
                        '--books', '1', '--mirror', mirror, '--vocab-size', '512', *FAST], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    shutil.rmtree(tmp/'run'/'train'); (tmp/'run'/'validation.json').unlink()
    return tmp/'run'


def copy_run(src, dest, parts=('corpus', 'data', 'pipeline_state.json')):
    dest.mkdir(parents=True)
    for p in parts:
        (shutil.copytree if (src/p).is_dir() else shutil.copy)(src/p, dest/p)
    return dest


def test_impossible_vocab_size_is_exit_3(tmp_path, prepared):
    run = copy_run(prepared, tmp_path/'run', ['corpus'])
    nbs = mixed_notebooks(tmp_path/'nbs', real={'tokenizer'})
    code, out, err = run_cli(['pipeline', '--run-dir', run, '--notebooks', nbs, '--skip-corpus', '--vocab-size', 60000, *FAST])
    assert code == ExitCode.TOKENIZER, err
    assert f'corpus: skipped (--skip-corpus: reusing {run}/corpus)' in out
    last = err.strip().splitlines()[-1]
    assert last.startswith('minillm pipeline: error: vocabulary size 60000 is too large for this corpus') and '--vocab-size' in last
    assert last.endswith(f'(executed notebook: {run}/notebooks/02_tokenizer.ipynb)')


def test_unwritable_checkpoint_dir_is_exit_4(tmp_path, prepared):
    run = copy_run(prepared, tmp_path/'run')
    (run/'train').mkdir(); (run/'train'/'checkpoints').write_text('a file where the checkpoints should go')
    nbs = mixed_notebooks(tmp_path/'nbs', real={'training'})
    code, out, err = run_cli(['pipeline', '--run-dir', run, '--notebooks', nbs, '--skip-corpus', '--vocab-size', 512,
                              '--epochs', 1, '--model', 'tiny', *FAST])
    assert code == ExitCode.TRAINING, err
    assert 'corpus: skipped' in out and 'tokenizer: skipped (outputs in' in out  # copied with its fingerprint
    last = err.strip().splitlines()[-1]
    assert 'checkpoints' in last and 'not writable' in last, last
    assert last.endswith(f'(executed notebook: {run}/notebooks/05_training.ipynb)')


# ---------------------------------------------------------------- end to end: every real chapter

def notebook_parameters(path) -> str:
    "The source of a notebook's cell tagged `parameters`."
    nb = json.loads(Path(path).read_text())
    return ''.join(next((''.join(c['source']) for c in nb['cells'] if 'parameters' in c['metadata'].get('tags', [])), ''))

THRESHOLDS = ('max_bpb_ratio', 'min_word_fraction', 'min_distinct_bigrams')


@pytest.fixture(scope='session')
def thresholds(chapters):
    "Validation's thresholds are parameters of chapter 6: a renamed one fails the end-to-end tests, never skips them."
    params = notebook_parameters(chapters/'06_generation.ipynb')
    missing = [t for t in THRESHOLDS if not re.search(rf'^{t}\s*(:[^=]*)?=', params, re.M)]
    assert not missing, f'06_generation.ipynb has no parameter {missing} (renamed? update THRESHOLDS and LOOSE)'
    return THRESHOLDS


needs_thresholds = pytest.mark.usefixtures('thresholds')  # an end-to-end test that passes thresholds to chapter 6
# one epoch of a tiny model on a tiny corpus learns little: these thresholds let its validation pass
LOOSE = ['--validation-param', 'max_bpb_ratio=100', '--validation-param', 'min_word_fraction=0',
         '--validation-param', 'min_distinct_bigrams=0']


@pytest.fixture(scope='module')
def e2e(tmp_path_factory, mirror):
    "One real run of every chapter: a 1,000-line book from the local mirror, 1 epoch of the tiny model."
    tmp = tmp_path_factory.mktemp('e2e')
    env = dict(os.environ, MINILLM_CACHE=str(tmp/'cache'))
    r = subprocess.run([sys.executable, '-m', 'minillm', 'pipeline', '--run-dir', str(tmp/'run'), '--books', '1',
                        '--mirror', mirror, '--vocab-size', '512', '--epochs', '1', '--model', 'tiny', '--batch-size', '16',
                        '--device', 'cpu', *LOOSE, *FAST], env=env, capture_output=True, text=True, cwd=tmp, timeout=900)
    return tmp/'run', r


@needs_thresholds
def test_end_to_end(e2e):
    run, r = e2e
    assert r.returncode == 0, r.stderr
    for p in pl.PHASES:
        nb = json.loads((run/'notebooks'/p.notebook).read_text())
        ran = nb['metadata'].get('papermill', {})
        assert 'exception' in ran and ran['exception'] is None, f'{p.notebook}: not run by papermill, or it raised'
        assert not any(c['metadata'].get('papermill', {}).get('exception') for c in nb['cells']), p.notebook
        assert not any(o.get('output_type') == 'error' for c in nb['cells'] for o in c.get('outputs', []))
    s = json.loads((run/'summary.json').read_text())
    assert s['validation']['passed'] is True and s['training']['final_val_loss'] > 0
    assert s['config']['epochs'] == 1 and set(s['phase_seconds']) == {p.name for p in pl.PHASES}
    report = (run/'report.md').read_text()
    assert '![loss curve](train/loss.png)' in report and (run/'train'/'loss.png').exists() and '## Samples' in report
    assert f'report: {run}/report.md' in r.stdout and '\nsample: ' in r.stdout
    assert '=== [4/5] training' in r.stdout and 'training done in' in r.stdout
    from minillm.checkpoint import load
    model, tok = load(run/'train')
    assert model.config.vocab_size == tok.vocab_size == 512


@needs_thresholds
def test_a_successful_run_prints_no_fake_errors(e2e):
    "The chapters' demonstrations of errors and the checks of an untrained model stay out of a passing run's terminal (issue 20, item 10)."
    run, r = e2e
    assert r.returncode == 0, r.stderr
    for fake in ("bad --books value", 'not found on http', 'no corpus in', 'error:', 'exit 2:', 'FAIL '):
        assert fake not in r.stdout + r.stderr, fake


@needs_thresholds
def test_unmeetable_validation_is_exit_5(e2e, tmp_path):
    run = copy_run(e2e[0], tmp_path/'run', ['corpus', 'data', 'train', 'pipeline_state.json'])
    nbs = mixed_notebooks(tmp_path/'nbs', real={'validation'})
    pl.make_notebook(nbs/'05_training.ipynb', notebook_parameters(nbs/'05_training.ipynb'), 'pass')  # keep the checkpoint
    code, out, err = run_cli(['pipeline', '--run-dir', run, '--notebooks', nbs, '--skip-corpus', '--vocab-size', 512, '--resume',
                              *LOOSE, '--validation-param', 'min_word_fraction=1.01', *FAST])  # the last value wins
    assert code == ExitCode.VALIDATION, err
    last = err.strip().splitlines()[-1]
    assert last.startswith('minillm pipeline: error: validation failed: real_words ') and '(needs >= 1.01)' in last
    assert 'bits_per_byte' not in last
    assert last.endswith(f'(executed notebook: {run}/notebooks/06_generation.ipynb)')
    report = (run/'report.md').read_text()  # written all the same, saying why (issue 20, item 9)
    assert '**Validation failed**: validation failed: real_words ' in report and f'report: {run}/report.md' in out
    assert json.loads((run/'summary.json').read_text())['status'] == 'validation failed'


@pytest.mark.parametrize('report, message', [
    (None, 'validation wrote no report to'),
    ({'passed': False, 'failed': ['real_words']}, 'validation failed: real_words (report: '),
])
def test_validation_must_leave_a_passing_report(report, message, tmp_path):
    nbs = pl.make_standin_notebooks(tmp_path/'nbs')
    body = f"import json; from pathlib import Path; Path(report_path).write_text(json.dumps({report!r}))" if report else 'pass'
    pl.make_notebook(nbs/'06_generation.ipynb', notebook_parameters(nbs/'06_generation.ipynb'), body)
    code, out, err = run_cli(['pipeline', '--run-dir', tmp_path/'run', '--notebooks', nbs, *FAST])
    assert code == ExitCode.VALIDATION and message in err, err
    assert message in (tmp_path/'run'/'report.md').read_text()  # the failed run's report says why


def test_sigterm_reaches_the_training_notebook_which_saves_then_exit_130(tmp_path):
    import signal
    nbs = pl.make_standin_notebooks(tmp_path/'nbs')
    body = ("import time\nfrom pathlib import Path\nprint('training', flush=True)\n"
            "try: time.sleep(60)\nexcept KeyboardInterrupt:\n"
            "    Path(out_dir).mkdir(parents=True, exist_ok=True); (Path(out_dir)/'saved').write_text('state'); raise")
    pl.make_notebook(nbs/'05_training.ipynb', notebook_parameters(nbs/'05_training.ipynb'), body)
    run = tmp_path/'run'
    stderr = tmp_path/'stderr.txt'
    with stderr.open('w') as f:  # a file, not a pipe: nothing blocks the pipeline while the test waits for stdout
        p = subprocess.Popen([sys.executable, '-m', 'minillm', 'pipeline', '--run-dir', str(run), '--notebooks', str(nbs),
                              *FAST], stdout=subprocess.PIPE, stderr=f, text=True)
    try:
        out, lines = '', queue.Queue()  # stdout's lines, read in a thread so that waiting for one has a deadline
        threading.Thread(target=lambda: [lines.put(line) for line in iter(p.stdout.readline, '')], daemon=True).start()
        deadline = time.monotonic() + 120
        while 'training\n' not in out:  # wait until the training notebook runs, two minutes at most
            try: out += lines.get(timeout=max(0, deadline - time.monotonic()))
            except queue.Empty: pytest.fail(f'the training notebook did not start within 2 minutes; stdout: {out!r}')
            assert p.poll() is None or not lines.empty(), f'the pipeline ended early: {stderr.read_text()}'
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 130, stderr.read_text()
    finally:
        if p.poll() is None: p.kill(); p.wait(timeout=60)
    err = stderr.read_text()
    assert (run/'train'/'saved').read_text() == 'state'
    assert err.strip().splitlines()[-1] == (f'minillm pipeline: error: interrupted during training (executed notebook: '
                                            f'{run}/notebooks/05_training.ipynb); finished phases and training checkpoints '
                                            f'are kept: continue with `minillm pipeline --run-dir {run} --min-free-disk 0.01 '
                                            f'--notebooks {nbs} --resume`')
