import contextlib, http.server, os, sys, threading
from pathlib import Path
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

@pytest.fixture(scope='session')
def root() -> Path:
    "The repository's top folder."
    return ROOT

@pytest.fixture(scope='session', autouse=True)
def one_thread():
    """Tests run tiny models: one thread is fastest, deterministic, and kind to other jobs on the machine.
    The environment says so too, for the notebooks' kernels and the commands the tests start: with two
    pytest-xdist workers on two cores, a kernel's two spinning OpenMP threads share the cores with the
    other worker and run tens of times slower (measured: a tiny model's step 2.8 s instead of 50 ms)."""
    n = torch.get_num_threads(); torch.set_num_threads(1)
    saved = {k: os.environ.get(k) for k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')}
    os.environ.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    yield
    torch.set_num_threads(n)
    for k, v in saved.items():
        if v is None: os.environ.pop(k, None)
        else: os.environ[k] = v


@pytest.fixture(scope='session')
def venv_bin() -> Path:
    "The folder holding this interpreter's console scripts (nbdev_export, jupyter-book, minillm)."
    return Path(sys.executable).parent


@contextlib.contextmanager
def local_server(handler):
    "Serve `handler` on 127.0.0.1 at a free port in a background thread; yield its base URL (no test touches the internet)."
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    srv.daemon_threads = True  # a handler stuck in a slow answer must not block shutdown
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try: yield f'http://127.0.0.1:{srv.server_address[1]}'
    finally: srv.shutdown(); srv.server_close()


def pytest_configure(config):
    config._minillm_report = {}  # section -> lines printed in the terminal summary


def report(config, section: str) -> list:
    "The lines of `section` in the end-of-session summary: a test appends what it measured (trial counts, figures)."
    return config._minillm_report.setdefault(section, [])


@pytest.fixture(scope='session')
def fault_report(pytestconfig) -> list:
    "Lines a fault-injection test adds here are printed in the terminal summary (trial counts and outcomes)."
    return report(pytestconfig, 'fault injection')


def pytest_sessionfinish(session):
    "A pytest-xdist worker hands its summary lines to the controller, which prints them."
    if hasattr(session.config, 'workeroutput'): session.config.workeroutput['minillm_report'] = session.config._minillm_report


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    for section, lines in getattr(node, 'workeroutput', {}).get('minillm_report', {}).items():
        report(node.config, section).extend(lines)


def pytest_terminal_summary(terminalreporter, config):
    for section, lines in getattr(config, '_minillm_report', {}).items():
        if not lines: continue
        terminalreporter.write_sep('-', section)
        for line in lines: terminalreporter.write_line(line)
