"""Fault injection (issue 10): kill training at random moments, interrupt every pipeline phase, fill the disk,
run twice into one directory, misbehave as a mirror, corrupt the artifacts, plant pickles, and feed every
command bad input. Each promise is in chapter 10 (nbs/10_reliability.ipynb); cases a chapter's own tests
already cover are named where they belong rather than repeated:

- exact resume after SIGTERM, SIGKILL once, a step limit, an interrupted checkpoint swap: test_training.py
- a mirror that times out every time, answers 503 twice, serves HTML, binary or empty text, a size cap,
  a full disk before and while writing the corpus: test_corpus.py
- not enough disk before training, corrupt checkpoint files on resume: test_training.py
- a SIGTERM forwarded to a stand-in training notebook, prerequisites and argument errors: test_pipeline.py

Run with `-s` to see the kill trials as they happen; a summary is printed at the end of the session.
"""
import collections, errno, http.server, json, mmap, os, pickle, random, re, shlex, shutil, signal
import select, socket, struct, subprocess, sys, threading, time
from pathlib import Path

import pytest
from conftest import local_server  # a mirror on 127.0.0.1
import torch
from safetensors.torch import load_file

from helpers import ENV, PACKAGE_FILES, gutenberg, same_weights, unsafe_calls, weights

import minillm.core as core
import minillm.pipeline as pl
from minillm.core import LOCK_FILE, ExitCode, MinillmError, main, read_lock, run_lock
from minillm.corpus import build_corpus, download_book
from minillm.model import ModelConfig
from minillm.testing import (BAD_INPUTS, TRAIN_ARGS, check_bad_input, error_line, malicious_pickle, real_tokenizer,
                             run_cli, write_shards)

ROOT = Path(__file__).resolve().parent.parent


# ====================================================================== 1. SIGKILL at random moments

# A fork server: one process imports torch and minillm once, then forks a child per training run. The
# child is an ordinary process running `minillm train` (its own pid, killed with a real SIGKILL), without
# paying two seconds of imports per run. Before it trains, the child publishes what it is doing (a step, an
# evaluation, a checkpoint write) and how many steps it finished in a small shared memory map, and widens the
# checkpoint-write windows with short sleeps in every fsync and rename, so kills land there too.
FORK_SERVER = r'''
import contextlib, io, json, mmap, os, struct, sys, tempfile, time
import torch, tqdm
torch.set_num_threads(1)
tqdm.tqdm.monitor_interval = 0  # no monitor thread: a process that forks should have only one
import minillm.training as T
from minillm.core import main
with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    main(json.loads(sys.argv[1]) + ['--out', d])  # warm up once (lazy set-up in torch, AdamW, matplotlib)

def instrument(path, slow):
    m = mmap.mmap(os.open(path, os.O_RDWR), 64)
    counts, slot = {'step': 0, 'eval': 0, 'ckpt': 0}, {'step': 16, 'eval': 24, 'ckpt': 32}
    done = [0]
    def enter(name):
        counts[name] += 1; m[slot[name]:slot[name] + 8] = struct.pack('q', counts[name]); m[0:8] = name.encode().ljust(8)
    def leave(): m[0:8] = b'loop    '
    def wrap(name, real, pause=0.0, finished=False):
        def f(*a, **k):
            enter(name); time.sleep(pause); r = real(*a, **k)
            if finished: done[0] += 1; m[8:16] = struct.pack('q', done[0])
            leave(); return r
        return f
    T.train_step = wrap('step', T.train_step, slow['step'], finished=True)
    T.evaluate_loss = wrap('eval', T.evaluate_loss, slow['eval'])
    T.save_checkpoint = wrap('ckpt', T.save_checkpoint)
    real_fsync, real_replace = os.fsync, os.replace
    def fsync(fd): time.sleep(slow['io']); return real_fsync(fd)
    def replace(a, b): time.sleep(slow['io']); return real_replace(a, b)
    os.fsync, os.replace = fsync, replace
    m[0:8] = b'setup   '

def child(req):
    fd = os.open(req['log'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1); os.dup2(fd, 2); os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY); os.dup2(null, 0)
    instrument(req['phase_file'], req['slow'])
    code = main(req['args'])
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(code)

for line in sys.stdin:
    req = json.loads(line)
    if req['cmd'] == 'run':
        pid = os.fork()
        if pid == 0:
            try: child(req)
            except BaseException:
                import traceback; traceback.print_exc(); sys.stderr.flush(); os._exit(99)
        reply = {'pid': pid}
    else:
        _, status = os.waitpid(req['pid'], 0)
        reply = {'code': os.waitstatus_to_exitcode(status)}
    print(json.dumps(reply), flush=True)
'''

SLOW = {'step': 0.002, 'eval': 0.02, 'io': 0.003}  # seconds added per step, per evaluation, per fsync or rename
PHASES_OF_TRAINING = ('step', 'eval', 'ckpt')
SLOTS = {'step': 16, 'eval': 24, 'ckpt': 32}


class ForkServer:
    def __init__(self, warm_up: list):
        self.p = subprocess.Popen([sys.executable, '-c', FORK_SERVER, json.dumps([str(a) for a in warm_up])],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)

    def _ask(self, req, timeout: float = 300) -> dict:
        "Send one request and read its one-line answer, within `timeout` seconds (a hung child fails the test)."
        self.p.stdin.write(json.dumps(req) + '\n'); self.p.stdin.flush()
        # each answer is read whole before the next request, so nothing waits in the reader's buffer: select sees it all
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        assert ready, f'the fork server did not answer {req} within {timeout} s'
        return json.loads(self.p.stdout.readline())

    def start(self, args, phase_file: Path, log: Path) -> int:
        phase_file.write_bytes(bytes(64))
        return self._ask(dict(cmd='run', args=[str(a) for a in args], phase_file=str(phase_file), log=str(log), slow=SLOW))['pid']

    def wait(self, pid: int) -> int:
        return self._ask(dict(cmd='wait', pid=pid))['code']

    def close(self):
        self.p.stdin.close(); self.p.wait(timeout=30)


class Probe:
    "The child's published phase, completed steps and phase counters (a read-only view of its memory map)."
    def __init__(self, path: Path): self.m = mmap.mmap(os.open(path, os.O_RDONLY), 64, prot=mmap.PROT_READ)
    @property
    def phase(self) -> str: return self.m[0:8].decode().strip('\x00 ') or 'start'
    @property
    def steps(self) -> int: return struct.unpack('q', self.m[8:16])[0]
    def count(self, name) -> int: return struct.unpack('q', self.m[SLOTS[name]:SLOTS[name] + 8])[0]


def checkpoint_readable(d: Path) -> int:
    "Load every file of checkpoint `d` (raises if any is unreadable); return its global step."
    load_file(str(d/'model.safetensors')); load_file(str(d/'optimizer.safetensors'))
    ModelConfig.from_dict(json.loads((d/'config.json').read_text()))
    json.loads((d/'train_config.json').read_text())
    return json.loads((d/'state.json').read_text())['global_step']


N_TRIALS, KILL_SEED = 24, 20261124
KILL_ARGS = [*TRAIN_ARGS, '--epochs', '3', '--checkpoint-every', '1', '--eval-every', '10', '--eval-batches', '2',
             '--warmup', '10', '--learning-rate', '3e-3']


def test_sigkill_at_random_moments_then_resume(tmp_path, fault_report):
    """24 seeded trials: a short training run is SIGKILLed during a step, an evaluation, a checkpoint write,
    or at a random instant; `--resume` must continue it, every checkpoint on disk must load, at most one
    checkpoint interval (an epoch) may be lost, and the final `last` and `best` weights must equal an
    uninterrupted run's bit for bit."""
    data = write_shards(tmp_path/'data')  # a learnable sequence: `best` improves
    args = ['train', '--data', data, *KILL_ARGS]
    server = ForkServer([*args, '--epochs', '1'])
    try:
        ref = tmp_path/'ref'
        t0 = time.perf_counter()
        pid = server.start([*args, '--out', ref], tmp_path/'ref.phase', tmp_path/'ref.log')
        assert server.wait(pid) == 0, (tmp_path/'ref.log').read_text()
        ref_seconds, ref_probe = time.perf_counter() - t0, Probe(tmp_path/'ref.phase')
        totals = {p: ref_probe.count(p) for p in PHASES_OF_TRAINING}
        steps_per_epoch = json.loads((ref/'summary.json').read_text())['total_steps'] // 3
        rng, rows = random.Random(KILL_SEED), []
        for i in range(N_TRIALS):
            rows.append(_kill_trial(server, args, tmp_path/f'trial{i:02d}', ['step', 'eval', 'ckpt', 'any'][i % 4],
                                    rng, totals, ref))
    finally:
        server.close()
    outcomes = collections.Counter(r['landed'] for r in rows)
    lines = [f'kill trials: {len(rows)} ({sum(r["killed"] for r in rows)} killed by SIGKILL), reference run '
             f'{ref_seconds:.1f} s, {totals["step"]} steps, {totals["eval"]} evaluations, {totals["ckpt"]} checkpoint writes',
             'landed in: ' + ', '.join(f'{k} {v}' for k, v in sorted(outcomes.items())),
             f'resumed: {sum(r["code"] == 0 for r in rows)}/{len(rows)}; every checkpoint readable: '
             f'{sum(r["readable"] for r in rows)}/{len(rows)}; bitwise equal to the uninterrupted run: '
             f'{sum(r["equal"] for r in rows)}/{len(rows)}; most steps lost: {max(r["lost"] for r in rows)} '
             f'(one checkpoint interval: {steps_per_epoch}); interrupted writes recovered: '
             f'{sum(bool(r["leftovers"]) for r in rows)}; stale locks taken over: {sum(r["lock_taken_over"] for r in rows)}']
    table = [f'  {r["trial"]:>2} aim {r["aim"]:<4} landed {r["landed"]:<5} after {r["progress"]:>2} steps, resumed from '
             f'{r["resumed_from"]:<8} lost {r["lost"]:>2} {" ".join(r["leftovers"])}' for r in rows]
    print('\n'.join(lines + table))
    fault_report.extend(lines)
    assert sum(r['killed'] for r in rows) >= 20
    assert all(r['code'] == 0 for r in rows), [r for r in rows if r['code'] != 0]
    assert all(r['readable'] for r in rows)
    assert all(r['lock_taken_over'] for r in rows if r['locked'])  # the dead run's lock never blocks the resume
    assert all(r['lost'] <= steps_per_epoch for r in rows)
    assert all(r['equal'] for r in rows), [r['trial'] for r in rows if not r['equal']]
    assert {'step', 'eval', 'ckpt'} <= set(outcomes), outcomes


def _kill_trial(server, args, out, aim, rng, totals, ref) -> dict:
    "Start a run into `out`, SIGKILL it where `aim` says, check what is on disk, resume it, compare with `ref`."
    phase_file = out.parent/f'{out.name}.phase'
    pid = server.start([*args, '--out', out], phase_file, out.parent/f'{out.name}.log')
    probe, t0 = Probe(phase_file), time.perf_counter()
    if aim == 'any':  # a random moment: after a random number of steps, then a random pause of up to 30 ms
        at, pause = rng.randint(0, totals['step'] - 1), rng.uniform(0, 0.03)
        while probe.steps < at and time.perf_counter() - t0 < 60: time.sleep(0.0003)
        time.sleep(pause)
    else:  # the k-th time the child enters the aimed phase, then a random moment inside it
        k, pause = rng.randint(1, totals[aim] - 1), rng.uniform(0, {'step': 0.002, 'eval': 0.015, 'ckpt': 0.04}[aim])
        while not (probe.phase == aim and probe.count(aim) >= k) and time.perf_counter() - t0 < 60:
            time.sleep(0.0003)
        time.sleep(pause)
    os.kill(pid, signal.SIGKILL)
    code = server.wait(pid)
    landed, progress = probe.phase, probe.steps
    ck = out/'checkpoints'
    leftovers = sorted(p.name.split('-')[0] + '-' + p.name.split('-')[1] for p in ck.glob('.*')) if ck.exists() else []
    readable, steps = True, {}
    for name in ('last', 'best'):  # what resume will find: the checkpoint, or the one a killed swap set aside
        d = ck/name if (ck/name).exists() else ck/f'.old-{name}'
        if d.exists():
            try: steps[name] = checkpoint_readable(d)
            except Exception: readable = False
    resumed_from = max(steps, key=lambda n: (steps[n], n == 'last')) if steps else None
    locked = read_lock(out) is not None
    r = resume_in_child(server, args, out)
    return dict(trial=int(out.name[5:]), aim=aim, landed=landed, killed=code == -signal.SIGKILL, progress=progress,
                resumed_from=f'{resumed_from}@{steps[resumed_from]}' if resumed_from else 'scratch',
                lost=progress - (steps[resumed_from] if resumed_from else 0), leftovers=leftovers, readable=readable,
                code=r['code'], locked=locked, lock_taken_over=locked and 'took over the lock' in r['log'],
                equal=r['code'] == 0 and same_weights(weights(ref, 'last'), weights(out, 'last'))
                and same_weights(weights(ref, 'best'), weights(out, 'best')))


def resume_in_child(server, args, out) -> dict:
    "Resume the killed run `out` in another forked child; return its exit code and log."
    log = out.parent/f'{out.name}.resume.log'
    code = server.wait(server.start([*args, '--out', out, '--resume'], out.parent/f'{out.name}.resume.phase', log))
    return dict(code=code, log=log.read_text())


# ====================================================================== 2. Ctrl+C and SIGTERM at each pipeline phase

# Stand-in chapter notebooks (chapter 7's `make_standin_notebooks`) with a trap in front of each body: the
# notebook records the parameters it received, and if the test armed its phase, it waits to be interrupted,
# saves a marker on KeyboardInterrupt (what training does with its checkpoint) and lets the interrupt through.
TRAP = '''import json, os, time
from pathlib import Path
_traps = Path(os.environ['MINILLM_TEST_TRAPS'])
(_traps/'params-{phase}.json').write_text(json.dumps({{k: globals()[k] for k in {names!r}}}))
if (_traps/'{phase}').exists():
    (_traps/'waiting-{phase}').write_text('')
    try:
        for _ in range(1200): time.sleep(0.05)
        raise RuntimeError('the trap was not interrupted within a minute')
    except KeyboardInterrupt:
        (_traps/'saved-{phase}').write_text('state'); raise
'''


def trap_notebooks(folder: Path, cfg) -> Path:
    nbs = pl.make_standin_notebooks(folder)
    for p in pl.PHASES:
        params, body = (''.join(c['source']) for c in json.loads((nbs/p.notebook).read_text())['cells'])
        names = list(pl.phase_parameters(p.name, cfg))
        pl.make_notebook(nbs/p.notebook, params, TRAP.format(phase=p.name, names=names) + body)
    return nbs


def signal_when(path: Path, sig, before=None, timeout: float = 60):
    "In a thread: once `path` exists, call `before()`, then send `sig` to this process (whose pipeline forwards it)."
    def go():
        t0 = time.time()
        while not path.exists():
            if time.time() - t0 > timeout: return
            time.sleep(0.02)
        if before: before()
        os.kill(os.getpid(), sig)
    t = threading.Thread(target=go, daemon=True); t.start()
    return t


# awkward values that must reach the notebooks unchanged, never as code
RUN_NAME = 'run "quoted" \\ it\'s'
MIRROR = 'http://127.0.0.1:9/mirror/"quoted"/back\\slash/it\'s'
CHAINS = {'sigint first': [('corpus', signal.SIGINT), ('tokenizer', signal.SIGTERM), ('training', signal.SIGINT),
                           ('validation', signal.SIGTERM)],
          'sigterm first': [('corpus', signal.SIGTERM), ('tokenizer', signal.SIGINT), ('training', signal.SIGTERM),
                            ('validation', signal.SIGINT)]}


@pytest.mark.parametrize('chain', list(CHAINS))
def test_interrupt_every_phase_then_the_printed_command_resumes(chain, tmp_path, monkeypatch, fault_report):
    """Ctrl+C (SIGINT) and SIGTERM at the corpus, tokenizer, training and validation phases: exit 130, the
    phase's state saved, and the command printed on the last line continues the run; each resume is
    interrupted at the next phase, the last one finishes. The run directory's name and the mirror URL are full
    of quotes and backslashes, and must reach the notebooks intact.
    While the first phase runs, a second pipeline into the same run directory is refused."""
    traps, run = tmp_path/'traps', tmp_path/RUN_NAME
    traps.mkdir(); monkeypatch.setenv('MINILLM_TEST_TRAPS', str(traps))
    cfg = pl.PipelineConfig(run_dir=str(run), epochs=3, books='1', mirror=MIRROR, validation={'max_bpb_ratio': 1.5})
    nbs = trap_notebooks(tmp_path/'nbs', cfg)
    args = ['pipeline', '--run-dir', run, '--notebooks', nbs, '--min-free-disk', '0.01', '--epochs', '3', '--books', '1',
            '--mirror', MIRROR, '--validation-param', 'max_bpb_ratio=1.5']
    second = []
    def second_pipeline():  # a real second process, while this one holds the run directory
        second.append(subprocess.run([sys.executable, '-m', 'minillm', *map(str, args)], capture_output=True, text=True,
                                     env=ENV, timeout=120))
    seen = []
    for i, (phase, sig) in enumerate(CHAINS[chain]):
        (traps/phase).touch()
        signal_when(traps/f'waiting-{phase}', sig, before=second_pipeline if i == 0 and chain == 'sigint first' else None)
        code, out, err = run_cli(args)
        (traps/phase).unlink()
        last = error_line(err)
        assert code == ExitCode.INTERRUPTED, err
        assert (traps/f'saved-{phase}').read_text() == 'state'
        assert last.startswith(f'minillm pipeline: error: interrupted during {phase} (executed notebook: ') and \
            'continue with `minillm pipeline ' in last, last
        resume = last.split('continue with `', 1)[1][:-1]
        args = shlex.split(resume)[1:]
        assert args[-1] == '--resume' and args[args.index('--run-dir') + 1] == str(run)
        state = json.loads((run/'pipeline_state.json').read_text()) if (run/'pipeline_state.json').exists() else {}
        seen.append(f'{signal.Signals(sig).name} during {phase}: exit {code}, saved, finished phases {sorted(state)}')
        if phase == 'validation': assert 'corpus: skipped' in out and 'tokenizer: skipped' in out  # done earlier
    code, out, err = run_cli(args)
    assert code == 0, err
    assert 'corpus: skipped' in out and 'tokenizer: skipped' in out and (run/'report.md').exists()
    final = pl.PipelineConfig(run_dir=str(run), epochs=3, books='1', mirror=MIRROR, validation={'max_bpb_ratio': 1.5},
                              notebooks=str(nbs), min_free_disk=0.01, resume=True)
    for p in pl.PHASES:  # every parameter arrived as the value it was, quotes, backslashes and newlines included
        assert json.loads((traps/f'params-{p.name}.json').read_text()) == pl.phase_parameters(p.name, final), p.name
    assert not list(tmp_path.rglob('PWNED')) and not Path('PWNED').exists()
    assert len(second) == (chain == 'sigint first'), 'the second pipeline did not run'  # it runs in the first chain only
    if second:
        r = second[0]
        assert r.returncode == 1 and error_line(r.stderr).startswith(f'minillm pipeline: error: {run} is in use by pid '
                                                                     f'{os.getpid()}'), r.stderr
        seen.append('a second pipeline into the same run directory: refused (exit 1)')
    fault_report.append(f'pipeline interrupts ({chain}): ' + '; '.join(seen))


def test_ctrl_c_reaches_the_real_training_chapter_inside_the_pipeline(tmp_path, fault_report):
    """The real training chapter (05_training.ipynb) inside the pipeline, with stand-ins before and after it:
    Ctrl+C while it trains saves `checkpoints/last` and exits 130, and the printed command resumes training
    where it stopped. The pipeline holds RUN's lock while the training it runs holds RUN/train's."""
    nbs = pl.make_standin_notebooks(tmp_path/'nbs')
    tok = nbs/'02_tokenizer.ipynb'
    params = ''.join(json.loads(tok.read_text())['cells'][0]['source'])
    pl.make_notebook(tok, params, 'from minillm.testing import write_shards\nwrite_shards(out_dir, n_train=40_000)')
    shutil.copy(ROOT/'nbs'/'05_training.ipynb', nbs/'05_training.ipynb')
    run = tmp_path/'run'
    metrics = run/'train'/'metrics.jsonl'
    signal_when_true = lambda: metrics.exists() and metrics.read_text().count('\n') >= 1
    def go():
        t0 = time.time()
        while not signal_when_true():
            if time.time() - t0 > 240: return
            time.sleep(0.05)
        held.append(((read_lock(run) or {}).get('pid'), (read_lock(run/'train') or {}).get('pid')))
        os.kill(os.getpid(), signal.SIGINT)
    held = []
    threading.Thread(target=go, daemon=True).start()
    code, out, err = run_cli(['pipeline', '--run-dir', run, '--notebooks', nbs, '--min-free-disk', '0.01',
                                  '--epochs', '3', '--batch-size', '8', '--model', 'tiny', '--device', 'cpu',
                                  '--eval-every', '20'])   # metrics early, so the interrupt lands mid-run
    last = error_line(err)
    assert code == ExitCode.INTERRUPTED and last.startswith('minillm pipeline: error: interrupted during training'), err
    assert held[0][0] == os.getpid() and held[0][1] not in (None, os.getpid())  # RUN locked here, RUN/train by the kernel
    state = json.loads((run/'train'/'checkpoints'/'last'/'state.json').read_text())
    total = json.loads((run/'train'/'summary.json').read_text())['total_steps']
    assert 20 <= state['global_step'] < total                           # saved where Ctrl+C stopped it
    assert json.loads((run/'train'/'summary.json').read_text())['status'] == 'stopped (SIGINT)'
    code, out, err = run_cli(shlex.split(last.split('continue with `', 1)[1][:-1])[1:])
    assert code == 0, err
    summary = json.loads((run/'train'/'summary.json').read_text())
    assert summary['status'] == 'complete' and summary['steps'] == total
    assert f'resuming at epoch {state["epoch"] + 1} step {state["step"]}' in out + err
    fault_report.append(f'Ctrl+C in the real training chapter inside the pipeline: exit 130 at step {state["global_step"]} '
                        f'of {total}, checkpoint saved; the printed command resumed and finished it')


# ====================================================================== 3. Disk full

@pytest.fixture(scope='module')
def real_run(tmp_path_factory) -> dict:
    "A finished one-epoch run on real token shards (a real 400-piece tokenizer), so every loader works on it."
    from minillm.tokenizer import encode_shards
    root = tmp_path_factory.mktemp('real')
    tok = real_tokenizer(root/'cache')
    data = root/'data'; encode_shards(root/'cache'/'corpus', tok, data, progress=False)
    run = root/'run'
    assert main(['train', '--data', str(data), '--out', str(run), *TRAIN_ARGS, '--epochs', '1', '--eval-every', '20',
                 '--warmup', '5']) == 0
    text = root/'text.txt'; text.write_text('To be, or not to be, that is the question.\n' * 20)
    return dict(data=data, run=run, text=text, corpus=root/'cache'/'corpus')


@pytest.fixture
def run_copy(real_run, tmp_path) -> Path:
    shutil.copytree(real_run['run'], tmp_path/'run')
    return tmp_path/'run'


def files_of(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob('*')) if p.is_file()}


def enospc_when(monkeypatch, fragment: str):
    "From now on, fsync fails with ENOSPC for files whose path contains `fragment` (the disk filled up)."
    real = os.fsync
    def fsync(fd):
        if fragment in os.readlink(f'/proc/self/fd/{fd}'): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    monkeypatch.setattr(os, 'fsync', fsync)


def test_checkpoint_write_that_runs_out_of_space(real_run, run_copy, capsys, monkeypatch):
    "The disk fills up while a checkpoint is written: one line, exit 4, the previous checkpoints untouched."
    ck = run_copy/'checkpoints'
    before = files_of(ck)
    enospc_when(monkeypatch, '/.tmp-')  # only files inside a checkpoint being written
    code = main(['train', '--data', str(real_run['data']), '--out', str(run_copy), *TRAIN_ARGS, '--epochs', '2',
                 '--eval-every', '20', '--warmup', '5', '--resume'])
    err = capsys.readouterr().err
    assert code == ExitCode.TRAINING, err
    line = error_line(err)
    assert re.fullmatch(rf'minillm train: error: writing checkpoint {ck}/(best|last) failed \(No space left on device\); '
                        r'the previous one is intact: free some space, then continue with --resume', line), line
    assert files_of(ck) == before and not list(ck.glob('.tmp-*'))
    monkeypatch.undo()                                                    # space again: the run continues
    assert main(['train', '--data', str(real_run['data']), '--out', str(run_copy), *TRAIN_ARGS, '--epochs', '2',
                 '--eval-every', '20', '--warmup', '5', '--resume']) == 0


def test_free_space_check_before_a_checkpoint(real_run, run_copy, capsys, monkeypatch):
    "The disk fills up during training: the check before the next checkpoint refuses it; nothing is half-written."
    Usage = collections.namedtuple('Usage', 'total used free')
    real, calls = core.shutil.disk_usage, []
    def usage(p):  # plenty at the start of the run, 1 kB later
        calls.append(p)
        return real(p) if len(calls) == 1 else Usage(10**12, 10**12 - 1000, 1000)
    monkeypatch.setattr(core.shutil, 'disk_usage', usage)
    before = files_of(run_copy/'checkpoints')
    code = main(['train', '--data', str(real_run['data']), '--out', str(run_copy), *TRAIN_ARGS, '--epochs', '2',
                 '--eval-every', '20', '--warmup', '5', '--resume'])
    line = error_line(capsys.readouterr().err)
    assert code == ExitCode.TRAINING and 'not enough free disk' in line and 'for checkpoint' in line, line
    assert files_of(run_copy/'checkpoints') == before


def test_shard_write_that_runs_out_of_space(real_run, tmp_path, capsys, monkeypatch):
    "The disk fills up while token shards are written: one line, exit 3, the old shards and meta.json untouched."
    data = tmp_path/'data'; shutil.copytree(real_run['data'], data)
    before = {f: (data/f).read_bytes() for f in ('train.bin', 'val.bin', 'meta.json')}
    enospc_when(monkeypatch, '/.val.bin.')
    code = main(['tokenizer', '--corpus', str(real_run['corpus']), '--out', str(data), '--vocab-size', '400', '--quiet'])
    line = error_line(capsys.readouterr().err)
    assert code == ExitCode.TOKENIZER and line == (f'minillm tokenizer: error: writing token shards to {data} failed '
                                                   f'(No space left on device); free some space or write elsewhere, '
                                                   f'then encode again'), line
    assert {f: (data/f).read_bytes() for f in before} == before and not list(data.glob('.*.tmp'))


def test_free_space_check_before_shards(real_run, tmp_path, capsys, monkeypatch):
    "Not enough room for the shards: refused before any is written (the corpus, training and pipeline checks are"
    " tested in test_corpus.py, test_training.py and test_pipeline.py)."
    Usage = collections.namedtuple('Usage', 'total used free')
    monkeypatch.setattr(core.shutil, 'disk_usage', lambda p: Usage(10**12, 10**12 - 1000, 1000))
    code = main(['tokenizer', '--corpus', str(real_run['corpus']), '--out', str(tmp_path/'data'), '--vocab-size', '400',
                 '--quiet'])
    line = error_line(capsys.readouterr().err)
    assert code == ExitCode.USAGE and 'not enough free disk' in line and 'for the token shards' in line, line
    assert not (tmp_path/'data'/'train.bin').exists()


# ====================================================================== 4. Two runs, one directory

def test_second_train_into_a_directory_in_use_is_refused(tmp_path, capsys):
    "While `minillm train` runs, a second one into its output directory is refused, naming the first; the first"
    " goes on, stops on SIGTERM and releases the lock. (A lock left by a killed run: the kill trials; two"
    " pipelines: the interrupt chain.)"
    data, out = write_shards(tmp_path/'data', n_train=40000), tmp_path/'out'
    args = ['--data', str(data), '--out', str(out), *TRAIN_ARGS, '--epochs', '20']
    first = subprocess.Popen([sys.executable, '-m', 'minillm', 'train', *args], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while (read_lock(out) or {}).get('pid') != first.pid:
            assert first.poll() is None, first.communicate(timeout=60)
            assert time.time() - t0 < 60, 'the first run did not take the lock within a minute'
            time.sleep(0.05)
        code = main(['train', *args, '--resume'])
        line = error_line(capsys.readouterr().err)
        assert code == ExitCode.USAGE, line
        assert line.startswith(f'minillm train: error: {out} is in use by pid {first.pid} on {socket.gethostname()} '
                               f'(`minillm train --data {data}') and 'use another directory' in line, line
        assert first.poll() is None                                       # the first run is unaffected
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    assert first.returncode == ExitCode.INTERRUPTED, err
    assert read_lock(out) is None and not (out/'.minillm.lock').exists()  # released on the way out


def test_the_pipeline_and_its_training_do_not_refuse_each_other(tmp_path):
    "The pipeline locks RUN, the training it runs locks RUN/train: both are held at once by one run."
    with run_lock(tmp_path/'run'):
        with run_lock(tmp_path/'run'/'train'):
            assert (tmp_path/'run'/LOCK_FILE).exists() and (tmp_path/'run'/'train'/LOCK_FILE).exists()
        with pytest.raises(MinillmError, match='is in use by pid'):
            with run_lock(tmp_path/'run'): pass


# ====================================================================== 5. A misbehaving mirror

BOOK = gutenberg('A line of the book, long enough to be text.\n' * 300, 'Test').encode()


class Mirror(http.server.BaseHTTPRequestHandler):
    "Books 41-49 misbehave at /cache/epub/N/pgN.txt (N = 50 is a plain book)."
    hits = collections.Counter()
    def log_message(self, *args): pass

    def do_GET(self):
        m = re.fullmatch(r'/cache/epub/(\d+)/pg\d+\.txt', self.path)
        n = int(m[1]) if m else 0
        Mirror.hits[n] += 1
        first = Mirror.hits[n] == 1
        if n == 41 or (n == 42 and first): return self._body(BOOK, cut=500, reset=True)  # the connection drops
        if n == 43: return self._body(BOOK, cut=500)                      # a short body: Content-Length not met
        if n == 44 and first: return self._body(b'server error', status=500)
        if n == 45 and first: time.sleep(1.0)                              # slower than the client's timeout
        if n == 46: return self._redirect('file:///etc/passwd')
        if n == 47: return self._redirect('ftp://127.0.0.1/pub/pg47.txt')
        if n == 48: return self._body(BOOK, length=10**9, cut=0)          # announces a gigabyte
        if n == 49: return self._redirect('/cache/epub/50/pg50.txt')      # an http redirect is followed
        if n in (42, 44, 45, 50): return self._body(BOOK)
        self._body(b'not here', status=404)

    def _redirect(self, url):
        self.send_response(302); self.send_header('Location', url); self.send_header('Content-Length', '0'); self.end_headers()

    def _body(self, body, status=200, cut=None, reset=False, length=None):
        self.send_response(status); self.send_header('Content-Type', 'text/plain')
        self.send_header('Content-Length', str(length or len(body))); self.end_headers()
        try:
            self.wfile.write(body[:cut]); self.wfile.flush()
            if reset: self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
            if cut is not None: self.close_connection = True; self.connection.close()
        except OSError: pass


@pytest.fixture(scope='module')
def mirror():
    with local_server(Mirror) as url: yield url


def cache_listing(cache: Path) -> list:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.mark.parametrize('book, hits, message', [
    (41, 2, r'broke the connection|sent a short body'),              # dropped mid-body every time: retried, given up
    (43, 2, r'sent a short body \(500 of \d+ bytes\) 2 times'),        # truncated every time: retried, given up
    (46, 1, r"Redirection to url 'file:///etc/passwd' is not allowed"),  # refused by urllib itself, not retried
    (47, 1, r'redirects to ftp://127\.0\.0\.1/pub/pg47\.txt: only http\(s\)'),
    (48, 1, r'over the 64\.0 MiB limit'),                             # refused before the body is read
])
def test_mirror_faults_refused_with_nothing_in_the_cache(book, hits, message, mirror, tmp_path):
    "Refused after the retries it deserves, with one line; the cache holds no file, whole or partial. (A mirror"
    " that always times out, answers 5xx, HTML, binary or empty text: test_corpus.py.)"
    Mirror.hits[book] = 0
    with pytest.raises(MinillmError, match=message) as e:
        download_book(book, tmp_path/'cache', mirror=mirror, timeout=2, retries=1, backoff=0.01)
    assert e.value.exit_code == ExitCode.CORPUS and '\n' not in str(e.value)
    assert Mirror.hits[book] == hits and cache_listing(tmp_path/'cache') == []


@pytest.mark.parametrize('book', [42, 44, 45, 49])  # drops once; 500 then 200; times out once; an http redirect
def test_mirror_faults_that_pass_are_retried(book, mirror, tmp_path):
    Mirror.hits[book] = 0
    p = download_book(book, tmp_path/'cache', mirror=mirror, timeout=0.5, retries=2, backoff=0.01)
    assert p.read_bytes() == BOOK and cache_listing(tmp_path/'cache') == [f'pg{book}.txt', f'pg{book}.txt.sha256']
    assert Mirror.hits[book] == (1 if book == 49 else 2)


def test_sigterm_during_a_download(mirror, tmp_path):
    "`minillm corpus` stopped by SIGTERM mid-download: exit 130, no partial file in the cache, old corpus intact."
    class Slow(http.server.BaseHTTPRequestHandler):
        started = threading.Event()
        def log_message(self, *args): pass
        def do_GET(self):
            self.send_response(200); self.send_header('Content-Type', 'text/plain')
            self.send_header('Content-Length', str(len(BOOK))); self.end_headers()
            try:
                for i in range(0, len(BOOK), 200):
                    self.wfile.write(BOOK[i:i + 200]); self.wfile.flush(); Slow.started.set(); time.sleep(0.2)
            except OSError: pass
    with local_server(Slow) as url:
        out, cache = tmp_path/'out', tmp_path/'cache'
        (tmp_path/'a.txt').write_text('One paragraph.\n\nAnother one.\n')
        build_corpus(out, files=[tmp_path/'a.txt'], progress=False)
        before = files_of(out)
        p = subprocess.Popen([sys.executable, '-m', 'minillm', 'corpus', '--books', '7', '--out', str(out), '--cache',
                              str(cache), '--mirror', url, '--quiet'],
                             env=ENV, stderr=subprocess.PIPE, text=True)
        assert Slow.started.wait(60)
        time.sleep(0.3)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    assert p.returncode == ExitCode.INTERRUPTED and error_line(err) == 'minillm corpus: interrupted', err
    assert cache_listing(cache) == [] and files_of(out) == before


# ====================================================================== 6. Corrupted data

CORRUPTED = ['a truncated shard', 'a shard longer than `meta.json` says', 'a tokenizer file that is not a SentencePiece model',
             '`--resume` from a `config.json` with a missing field', 'a `config.json` with a missing field',
             'a truncated validation shard']


@pytest.mark.parametrize('what', CORRUPTED)
def test_corrupted_data_is_caught_before_work_starts(what, tmp_path):
    "Each corruption (rows of the bad-input table) is named in one line before training or generation starts."
    case = next(c for c in BAD_INPUTS if c.what == what)
    r = check_bad_input(case, tmp_path/'w')
    assert r['problems'] == [], r
    assert not list((tmp_path/'w').rglob('metrics.jsonl')) and not list((tmp_path/'w').rglob('summary.json'))
    assert not list((tmp_path/'w').rglob('.tmp-*'))


# ====================================================================== Security

PWNED = 'PWNED'


def test_no_unsafe_calls_in_the_package():
    "No shell, no eval/exec, no unpickling, not even the pickle module, in any file of minillm/ (no exceptions)."
    assert unsafe_calls(PACKAGE_FILES) == []  # every file: tests/test_project.py checks that PACKAGE_FILES is all of them


def test_the_planted_pickle_would_run(tmp_path):
    "The control: unpickling the payload really creates the marker, so its absence below means it never ran."
    pickle.loads(malicious_pickle(tmp_path/PWNED))
    assert (tmp_path/PWNED).is_dir()
    torch.save({'x': malicious_pickle(tmp_path/'other')}, tmp_path/'t.pt')  # torch's zip format holds a pickle too


# every file a loader reads, and what reads it
READERS = {'train': lambda r, run: ['train', '--data', r['data'], '--out', run, *TRAIN_ARGS, '--epochs', '1', '--resume',
                                    '--eval-every', '20', '--warmup', '5'],   # real_run's options: a resume repeats them
           'generate': lambda r, run: ['generate', '--checkpoint', run, '--max-new-tokens', '4', '--seed', '0'],
           'validate': lambda r, run: ['validate', '--checkpoint', run, '--data', r['data'], '--samples', '2',
                                       '--sample-tokens', '40', '--max-bpb-ratio', '100', '--min-word-fraction', '0',
                                       '--min-distinct-bigrams', '0'],
           'evaluate': lambda r, run: ['evaluate', '--checkpoint', run, '--text', r['text']]}
PLANTS = [(f'checkpoints/{ck}/{f}', readers) for ck in ('last', 'best')
          for f, readers in [('model.safetensors', 'train generate validate evaluate'),
                             ('optimizer.safetensors', 'train'), ('state.json', 'train'),
                             ('config.json', 'train generate validate evaluate'),
                             ('train_config.json', 'validate'), ('tokenizer.model', 'generate validate evaluate')]]
PLANTS += [(f'data/{f}', 'train validate') for f in ('meta.json', 'train.bin', 'val.bin', 'tokenizer.model')]
EXTRAS = ['checkpoints/last/pytorch_model.bin', 'checkpoints/last/model.pt', 'checkpoints/last/optimizer.pt',
          'checkpoints/last/training_state.pt', 'checkpoints/last/rng_state.pth', 'checkpoints/best/model.pt',
          'checkpoints/best/scheduler.pkl', 'model.pt', 'state.pkl', 'data/train.pt', 'data/tokenizer.pkl']


@pytest.fixture
def planted_run(real_run, tmp_path) -> dict:
    "A copy of the real run and its data, for one test to booby-trap."
    shutil.copytree(real_run['run'], tmp_path/'run'); shutil.copytree(real_run['data'], tmp_path/'data')
    return dict(real_run, data=tmp_path/'data', run=tmp_path/'run', root=tmp_path)


@pytest.mark.parametrize('target, readers', PLANTS)
def test_a_planted_pickle_is_refused_never_run(target, readers, planted_run):
    "A pickle in place of a file a loader reads: every reader fails with one line (or ignores it); none runs it."
    root = planted_run['root']
    path = root/'run'/target if target.startswith('checkpoints') else root/target
    path.write_bytes(malicious_pickle(root/PWNED))
    for reader in readers.split():
        code, _, err = run_cli(READERS[reader](planted_run, root/'run'))
        assert code in set(ExitCode) - {ExitCode.INTERRUPTED, ExitCode.INTERNAL}, (reader, err)  # a documented code, never a crash (70)
        assert 'Traceback' not in err and (code == 0 or len([l for l in err.splitlines() if l.strip()]) == 1), (reader, err)
        assert not (root/PWNED).exists(), f'{reader} ran the pickle in {target}'


def test_planted_pickles_beside_the_real_files_are_ignored(planted_run):
    "Pickles where other tools keep weights (pytorch_model.bin, *.pt, *.pkl): every loader works and never reads them."
    root = planted_run['root']
    for extra in EXTRAS:
        path = root/'run'/extra if not extra.startswith('data/') else root/extra
        path.write_bytes(malicious_pickle(root/PWNED))
    for reader, args in READERS.items():
        code, _, err = run_cli(args(planted_run, root/'run'))
        assert code == 0, (reader, err)
        assert not (root/PWNED).exists(), reader


# ====================================================================== The bad-input table

@pytest.fixture(scope='module')
def bad_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp('bad')


def test_the_table_is_big_enough():
    assert len(BAD_INPUTS) >= 25
    assert {c.command for c in BAD_INPUTS} >= {'corpus', 'tokenizer', 'train', 'generate', 'validate', 'evaluate',
                                               'pipeline', 'bench'}
    assert len({(c.command, c.what) for c in BAD_INPUTS}) == len(BAD_INPUTS)


@pytest.mark.parametrize('i', range(len(BAD_INPUTS)), ids=[f'{c.command}: {c.what}' for c in BAD_INPUTS])
def test_bad_input(i, bad_root):
    "One line on stderr, the documented exit code, no traceback, nothing that existed destroyed (the book's table)."
    r = check_bad_input(BAD_INPUTS[i], bad_root/f'{i:02d}')
    assert r['problems'] == [], (r['line'], r['problems'])
