"Training: layout, exact resume after SIGTERM / SIGKILL / a step limit, DDP on 2 CPU processes, every bad input."
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import ENV, run_process, same_weights, weights
from minillm.core import main, ExitCode
from minillm.testing import TRAIN_ARGS, run_cli, write_shards
from minillm.training import TrainConfig, lr_at, train

TINY = [*TRAIN_ARGS, '--warmup', '10', '--learning-rate', '3e-3', '--eval-batches', '2']  # the bad inputs' tiny model, learning

VOCAB = 64


@pytest.fixture(scope='module')
def shards(tmp_path_factory) -> Path:
    "Chapter 2's format, of a learnable sequence of 64 token ids (minillm.testing.write_shards)."
    return write_shards(tmp_path_factory.mktemp('shards'), tokenizer=b'fake tokenizer')


@pytest.fixture(scope='module')
def big_shards(tmp_path_factory) -> Path:
    "Enough tokens that an interrupted run is still running when the signal arrives."
    return write_shards(tmp_path_factory.mktemp('big'), n_train=40000)


def assert_same_weights(a: dict, b: dict):
    assert same_weights(a, b), [k for k in a if k not in b or not torch.equal(a[k], b[k])]


def cli(*args) -> subprocess.CompletedProcess:
    return run_process('train', *args)


# --- a normal run -------------------------------------------------------------------------------------------

def test_train_layout_and_learning(shards, tmp_path):
    out = tmp_path / 'run'
    s = train(TrainConfig(data_dir=str(shards), out_dir=str(out), epochs=4, batch_size=8, learning_rate=3e-3,
                          model='tiny', n_layer=1, n_embd=32, n_head=2, block_size=16, device='cpu', dtype='float32',
                          warmup=10, eval_every=10, eval_batches=2, progress=False))
    assert s['status'] == 'complete' and s['epochs_done'] == 4 and s['steps'] == 4 * (4000 // 16 // 8)
    for f in ('metrics.jsonl', 'summary.json', 'loss.png'): assert (out / f).is_file(), f
    for ck in ('last', 'best'):
        names = {p.name for p in (out / 'checkpoints' / ck).iterdir()}
        assert {'model.safetensors', 'config.json', 'tokenizer.model', 'train_config.json', 'optimizer.safetensors',
                'state.json'} <= names
    assert (out / 'checkpoints' / 'last' / 'tokenizer.model').read_bytes() == b'fake tokenizer'
    metrics = [json.loads(l) for l in (out / 'metrics.jsonl').read_text().splitlines()]
    assert len(metrics) == s['steps'] // 10 + 1
    assert {'epoch', 'step', 'tokens', 'train_loss', 'val_loss', 'val_bpb', 'lr', 'tokens_per_s', 'elapsed'} <= metrics[0].keys()
    assert metrics[-1]['val_loss'] < metrics[0]['val_loss'] - 0.5          # it learned the bigram structure
    assert metrics[-1]['val_loss'] < np.log(VOCAB) - 1
    # metrics.jsonl rounds to 5 places, the summary's best does not: equal within that rounding, never exactly
    assert s['best_val_loss'] == pytest.approx(min(m['val_loss'] for m in metrics), abs=1e-5)
    from minillm.checkpoint import load_model
    model = load_model(out / 'checkpoints' / 'best')
    assert model.config.n_embd == 32 and model.config.vocab_size == VOCAB


def test_a_time_budget_plans_the_schedule_and_ends_annealed(shards, tmp_path):
    "--max-time fixes the schedule's length from the first steps' speed; the run ends with the rate at its floor."
    out = tmp_path / 'run'
    base = [*TINY, '--data', str(shards), '--out', str(out), '--epochs', '1000', '--eval-every', '20']
    r = cli(*base, '--max-time', '3s')
    assert r.returncode == 0, r.stderr
    assert 'plan: 1000 epochs are 31,000 steps' in r.stderr and 'the --max-time 3s budget fits' in r.stderr
    s = json.loads((out / 'summary.json').read_text())
    assert s['status'] == 'complete' and 0 < s['steps'] == s['total_steps'] < 31_000
    assert s['elapsed_s'] < 3 + 15   # never cut off: a run stops only 15 s past its budget (the overrun rule)
    metrics = [json.loads(l) for l in (out / 'metrics.jsonl').read_text().splitlines()]
    # annealed: the last step runs at the schedule's last rate (peak 3e-3 after 10 warmup steps, linear to 0
    # by default), and the step after it would be at 0
    last = lr_at(s['steps'] - 1, s['steps'], TrainConfig(learning_rate=3e-3, warmup=10))
    assert metrics[-1]['step'] == s['steps'] and metrics[-1]['lr'] == pytest.approx(last, rel=1e-6)
    assert last <= 3e-3 / (s['steps'] - 10) * 1.001 and lr_at(s['steps'], s['steps'], TrainConfig()) == 0
    assert json.loads((out / 'checkpoints' / 'last' / 'state.json').read_text())['total_steps'] == s['steps']
    # the same budget again: nothing to do, and it says how to go on
    again = cli(*base, '--resume', '--max-time', '3s')
    assert again.returncode == 0 and 'already finished its schedule' in again.stderr and 'larger --max-time' in again.stderr
    # a larger budget (the run's whole training time): planned again from where it is, and it trains on
    more = cli(*base, '--resume', '--max-time', '6s')
    assert more.returncode == 0, more.stderr
    assert 'the schedule changes from' in more.stderr and 'planned again for --max-time 6s' in more.stderr
    assert json.loads((out / 'summary.json').read_text())['steps'] > s['steps']


# --- exact resume -------------------------------------------------------------------------------------------

def test_resume_after_max_steps_is_bitwise_exact(shards, tmp_path):
    args = [*TINY, '--data', str(shards), '--epochs', '3', '--checkpoint-every', '2', '--eval-every', '7']
    ref, cut = tmp_path / 'ref', tmp_path / 'cut'
    assert cli(*args, '--out', str(ref)).returncode == 0
    r = cli(*args, '--out', str(cut), '--max-steps', '40')                  # stops mid-epoch 2, resumably
    assert r.returncode == 0 and 'stopped at --max-steps 40' in r.stderr and 'larger --max-steps' in r.stderr
    assert json.loads((cut / 'checkpoints' / 'last' / 'state.json').read_text())['global_step'] == 40
    r = cli(*args, '--out', str(cut), '--resume')
    assert r.returncode == 0, r.stderr
    assert_same_weights(weights(ref), weights(cut))
    assert_same_weights(weights(ref, 'best'), weights(cut, 'best'))
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if k not in ('elapsed', 'tokens_per_s')}
                       for l in (p / 'metrics.jsonl').read_text().splitlines()]
    assert strip(ref) == strip(cut)                                         # the same metrics, line for line



@pytest.mark.parametrize('extra', [[], ['--dropout', '0.1'], ['--grad-accum', '2']], ids=['plain', 'dropout', 'grad-accum-2'])
def test_exact_resume_with_dropout_and_accumulation(shards, tmp_path, extra):
    "Stopped at a step limit and resumed, the run ends bit for bit where the uninterrupted one does."
    args = [*TINY, *extra, '--data', str(shards), '--epochs', '2', '--eval-every', '9']
    ref, cut = tmp_path / 'ref', tmp_path / 'cut'
    assert cli(*args, '--out', str(ref)).returncode == 0
    r = cli(*args, '--out', str(cut), '--max-steps', '23')
    assert r.returncode == 0 and json.loads((cut / 'checkpoints' / 'last' / 'state.json').read_text())['global_step'] == 23
    assert not same_weights(weights(ref), weights(cut))                    # it really stopped early
    assert cli(*args, '--out', str(cut), '--resume').returncode == 0
    assert_same_weights(weights(ref), weights(cut))

def _start(args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-m', 'minillm', 'train', *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(pred, proc, timeout=120):
    t0 = time.time()
    while not pred():
        assert proc.poll() is None, f'run ended early: {proc.communicate(timeout=60)}'
        assert time.time() - t0 < timeout
        time.sleep(0.02)


def test_resume_after_sigterm_is_bitwise_exact(big_shards, tmp_path):
    args = [*TINY, '--data', str(big_shards), '--epochs', '2', '--eval-every', '50']
    ref, cut = tmp_path / 'ref', tmp_path / 'cut'
    p = _start([*args, '--out', str(cut)])
    _wait_for(lambda: (cut / 'metrics.jsonl').is_file() and (cut / 'metrics.jsonl').read_text().count('\n') >= 1, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == ExitCode.INTERRUPTED, err
    assert 'stopped by SIGTERM' in err and '--resume' in err
    state = json.loads((cut / 'checkpoints' / 'last' / 'state.json').read_text())
    assert 0 < state['global_step'] < 2 * (40000 // 16 // 8)
    assert cli(*args, '--out', str(ref)).returncode == 0
    r = cli(*args, '--out', str(cut), '--resume')
    assert r.returncode == 0, r.stderr
    assert_same_weights(weights(ref), weights(cut))


def test_resume_after_sigkill_is_bitwise_exact(big_shards, tmp_path):
    args = [*TINY, '--data', str(big_shards), '--epochs', '3', '--checkpoint-every', '1', '--eval-every', '100']
    ref, cut = tmp_path / 'ref', tmp_path / 'cut'
    p = _start([*args, '--out', str(cut)])
    state = cut / 'checkpoints' / 'last' / 'state.json'
    _wait_for(lambda: state.is_file(), p)
    time.sleep(0.3)
    p.kill(); p.communicate(timeout=60)                                    # SIGKILL: nothing is saved on the way out
    assert p.returncode == -signal.SIGKILL, 'the run ended before the kill: nothing was interrupted'
    killed_at = json.loads(state.read_text())                              # the last good checkpoint is readable
    assert 1 <= killed_at['epoch'] < 3 and killed_at['global_step'] < 3 * (40000 // 16 // 8), killed_at
    assert not (cut / 'summary.json').exists()                             # the run never reached its end
    r = cli(*args, '--out', str(cut), '--resume')
    assert r.returncode == 0, r.stderr
    assert cli(*args, '--out', str(ref)).returncode == 0
    assert_same_weights(weights(ref), weights(cut))



def test_a_budget_run_killed_and_resumed_is_the_planned_schedule_bit_for_bit(big_shards, tmp_path):
    "A --max-time run fixes its length once; killed after that and resumed, it equals a --steps run of that length."
    args = [*TINY, '--data', str(big_shards), '--epochs', '1000', '--checkpoint-every', '1', '--eval-every', '100']
    cut, ref = tmp_path / 'cut', tmp_path / 'ref'
    p = _start([*args, '--out', str(cut), '--max-time', '6s'])
    state = cut / 'checkpoints' / 'last' / 'state.json'
    def planned():
        try: return json.loads(state.read_text())['total_steps'] > 0
        except (OSError, ValueError, KeyError): return False
    _wait_for(planned, p)
    p.kill(); p.communicate(timeout=60)
    killed_at, total = (json.loads(state.read_text())[k] for k in ('global_step', 'total_steps'))
    assert 0 < killed_at < total                                           # the kill landed mid-schedule
    r = cli(*args, '--out', str(cut), '--max-time', '6s', '--resume')
    assert r.returncode == 0, r.stderr
    assert json.loads((cut / 'summary.json').read_text())['steps'] == total   # the same plan, finished
    assert cli(*args, '--out', str(ref), '--steps', str(total)).returncode == 0
    assert_same_weights(weights(ref), weights(cut))

def test_interrupted_swap_is_recovered(shards, tmp_path):
    "A kill between the two renames of a checkpoint swap leaves `.old-last`; the next start puts it back."
    out = tmp_path / 'run'
    assert cli(*TINY, '--data', str(shards), '--out', str(out), '--epochs', '1').returncode == 0
    ck = out / 'checkpoints'
    os.replace(ck / 'last', ck / '.old-last')
    (ck / '.tmp-last-x').mkdir()                                           # a half-written new checkpoint
    r = cli(*TINY, '--data', str(shards), '--out', str(out), '--epochs', '2', '--resume')
    assert r.returncode == 0, r.stderr
    assert not (ck / '.old-last').exists() and not (ck / '.tmp-last-x').exists()
    assert json.loads((ck / 'last' / 'state.json').read_text())['epoch'] == 2


# --- distributed --------------------------------------------------------------------------------------------

def test_ddp_two_cpu_processes(shards, tmp_path):
    out = tmp_path / 'ddp'
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'minillm.training']
    args = [*TINY, '--data', str(shards), '--out', str(out), '--epochs', '3', '--eval-every', '10']
    r = subprocess.run([*torchrun, *args, '--max-steps', '40'], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([*torchrun, *args, '--resume'], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / 'summary.json').read_text())
    assert s['processes'] == 2 and s['ranks_in_sync'] is True and s['status'] == 'complete'
    metrics = [json.loads(l) for l in (out / 'metrics.jsonl').read_text().splitlines()]
    assert metrics[-1]['val_loss'] < metrics[0]['val_loss'] - 0.3
    from minillm.checkpoint import load_model
    model = load_model(out / 'checkpoints' / 'last')                       # loads in a single process
    x = torch.randint(0, VOCAB, (1, 8))
    assert model(x)[0].shape == (1, 8, VOCAB)



def test_ddp_resume_is_bitwise_exact_and_force_restart_works(shards, tmp_path):
    "Two processes: stopped and resumed equals uninterrupted; --force-restart over a run starts afresh (it crashed)."
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'minillm.training']
    args = [*TINY, '--data', str(shards), '--epochs', '2', '--eval-every', '10']
    ddp = lambda *a: subprocess.run([*torchrun, *args, *a], env=ENV, capture_output=True, text=True, timeout=300)
    ref, cut = tmp_path / 'ref', tmp_path / 'cut'
    r = ddp('--out', str(ref)); assert r.returncode == 0, r.stderr[-2000:]
    r = ddp('--out', str(cut), '--max-steps', '20'); assert r.returncode == 0, r.stderr[-2000:]
    r = ddp('--out', str(cut), '--resume'); assert r.returncode == 0, r.stderr[-2000:]
    assert_same_weights(weights(ref), weights(cut))
    r = ddp('--out', str(cut), '--force-restart', '--max-steps', '5')
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((cut / 'checkpoints' / 'last' / 'state.json').read_text())['global_step'] == 5

# --- bad input ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('flag,value', [('--epochs', '0'), ('--batch-size', '-1'), ('--learning-rate', '0'),
                                        ('--block-size', '0'), ('--grad-accum', '0'), ('--checkpoint-every', '0')])
def test_bad_numbers(shards, tmp_path, flag, value):
    code, _, err = run_cli(['train', *TINY, '--data', str(shards), '--out', str(tmp_path / 'o'), flag, value])
    assert code == ExitCode.USAGE and f'{flag} must be positive' in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / 'o').exists()                                  # nothing written


def test_block_size_longer_than_val(shards, tmp_path):
    code, _, err = run_cli(['train', *TINY, '--data', str(shards), '--out', str(tmp_path / 'o'), '--block-size', '600'])
    assert code == ExitCode.USAGE and 'longer than the validation split' in err


def test_missing_and_truncated_shards(shards, tmp_path):
    code, _, err = run_cli(['train', *TINY, '--data', str(tmp_path / 'nothing'), '--out', str(tmp_path / 'o')])
    assert code == ExitCode.TRAINING and 'meta.json is missing' in err
    bad = tmp_path / 'bad'; shutil.copytree(shards, bad)
    (bad / 'val.bin').write_bytes((bad / 'val.bin').read_bytes()[:100])
    code, _, err = run_cli(['train', *TINY, '--data', str(bad), '--out', str(tmp_path / 'o')])
    assert code == ExitCode.TRAINING and 'val.bin' in err and 'truncated' in err


def test_shards_from_another_tokenizer(shards, tmp_path):
    other = tmp_path / 'other'; shutil.copytree(shards, other)
    (other / 'tokenizer.model').write_bytes(b'another tokenizer')
    code, _, err = run_cli(['train', *TINY, '--data', str(other), '--out', str(tmp_path / 'o')])
    assert code == ExitCode.TRAINING and 'another tokenizer' in err


@pytest.fixture(scope='module')
def _finished(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('finished') / 'run'
    assert main(['train', *TINY, '--data', str(shards), '--out', str(out), '--epochs', '1']) == 0
    return out


@pytest.fixture
def finished_run(_finished, tmp_path) -> Path:
    "A copy of a finished one-epoch run that the test may damage."
    shutil.copytree(_finished, tmp_path / 'run')
    return tmp_path / 'run'


@pytest.mark.parametrize('victim', ['model.safetensors', 'optimizer.safetensors', 'state.json'])
def test_corrupt_checkpoint_names_the_file(shards, finished_run, victim):
    f = finished_run / 'checkpoints' / 'last' / victim
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    code, _, err = run_cli(['train', *TINY, '--data', str(shards), '--out', str(finished_run), '--epochs', '2', '--resume'])
    assert code == ExitCode.TRAINING and victim in err and 'corrupt or truncated' in err


def test_model_mismatch_on_resume(shards, finished_run):
    code, _, err = run_cli(['train', *TINY, '--data', str(shards), '--out', str(finished_run), '--resume', '--n-embd', '64'])
    assert code == ExitCode.TRAINING and 'another model shape' in err and 'n_embd 32 -> 64' in err


def test_existing_checkpoints_refused_without_a_terminal(shards, finished_run):
    before = (finished_run / 'checkpoints' / 'last' / 'model.safetensors').read_bytes()
    code, _, err = run_cli(['train', *TINY, '--data', str(shards), '--out', str(finished_run)])
    assert code == ExitCode.USAGE and '--resume' in err and '--force-restart' in err
    assert (finished_run / 'checkpoints' / 'last' / 'model.safetensors').read_bytes() == before
    assert main(['train', *TINY, '--data', str(shards), '--out', str(finished_run), '--force-restart', '--epochs', '1']) == 0


def test_unwritable_output_dir(shards, tmp_path):
    blocker = tmp_path / 'file'; blocker.write_text('x')
    code, _, err = run_cli(['train', *TINY, '--data', str(shards), '--out', str(blocker / 'sub')])
    assert code == ExitCode.TRAINING and 'not writable' in err


def test_not_enough_disk(shards, tmp_path, monkeypatch):
    import minillm.core, collections
    Usage = collections.namedtuple('Usage', 'total used free')
    monkeypatch.setattr(minillm.core.shutil, 'disk_usage', lambda p: Usage(10**9, 10**9 - 1000, 1000))
    code, _, err = run_cli(['train', *TINY, '--data', str(shards), '--out', str(tmp_path / 'o'), '--epochs', '1'])
    assert code == ExitCode.TRAINING and 'not enough free disk' in err
    assert not any((tmp_path / 'o' / 'checkpoints').glob('*'))            # no half-written checkpoint left



@pytest.mark.parametrize('value,message', [('nan', 'must be a finite number, not nan'), ('inf', 'must be a finite number, not inf'),
                                           ('1e9', 'far too large')])
def test_learning_rates_that_cannot_work(shards, tmp_path, value, message):
    code, _, err = run_cli(['train', *TINY, '--data', str(shards), '--out', str(tmp_path / 'o'), '--learning-rate', value])
    assert code == ExitCode.USAGE and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / 'o').exists()


def test_divergence_stops_with_one_line_and_keeps_the_good_checkpoints(shards, tmp_path, monkeypatch):
    "A loss that turns to NaN stops the run (exit 4); nothing is saved after it, the earlier checkpoints are intact."
    import minillm.training as tr
    real, calls = tr.train_step, [0]
    def poisoned(*a, **kw):
        calls[0] += 1
        loss = real(*a, **kw)
        return loss * float('nan') if calls[0] > 40 else loss
    monkeypatch.setattr(tr, 'train_step', poisoned)
    out = tmp_path / 'run'
    code, _, err = run_cli(['train', *TINY, '--data', str(shards), '--out', str(out), '--epochs', '3', '--checkpoint-every', '1'])
    assert code == ExitCode.TRAINING and 'training diverged by step' in err and '--learning-rate' in err, err
    assert [l for l in err.splitlines() if 'diverged' in l] == [err.strip().splitlines()[-1]] and 'Traceback' not in err
    state = json.loads((out / 'checkpoints' / 'last' / 'state.json').read_text())
    assert state['global_step'] == 31 and all(torch.isfinite(v).all() for v in weights(out).values())


def test_resume_refuses_options_that_change_the_run(shards, finished_run):
    "--batch-size, --seed or --weight-decay on resume would silently change the run: refused, naming each change."
    code, _, err = run_cli(['train', *TINY, '--data', str(shards), '--out', str(finished_run), '--epochs', '2', '--resume',
                            '--batch-size', '16', '--seed', '7', '--weight-decay', '0.3'])
    assert code == ExitCode.TRAINING and len(err.strip().splitlines()) == 1
    assert '--batch-size 8 -> 16' in err and '--seed 1337 -> 7' in err and '--weight-decay 0.1 -> 0.3' in err
    code, _, err = run_cli(['train', *TINY, '--data', str(shards), '--out', str(finished_run), '--epochs', '2', '--resume'])
    assert code == 0, err                                                  # more epochs: the one change allowed


def test_train_step_accumulates_micro_batches_as_one_batch():
    "Two micro-batches of 4 step the weights as one batch of 8 does (the loss of each is halved)."
    from minillm.model import MiniLLM, ModelConfig
    from minillm.training import make_optimizer, train_step
    cfg, cpu = TrainConfig(batch_size=8, clip=1.0), torch.device('cpu')
    x = torch.randint(0, VOCAB, (8, 16))
    after = []
    for batches in ([(x, x)], [(x[:4], x[:4]), (x[4:], x[4:])]):
        torch.manual_seed(0)
        m = MiniLLM(ModelConfig(vocab_size=VOCAB, block_size=16, n_layer=1, n_head=2, n_kv_head=2, n_embd=32))
        opt = make_optimizer(m, cfg, cpu)
        loss = train_step(m, opt, batches, 1e-3, cfg, cpu, 'float32')
        assert all(p.grad is None for p in m.parameters())  # dropped, not zeroed
        after.append((loss, [p.detach().clone() for p in m.parameters()]))
    torch.testing.assert_close(after[1][0], after[0][0])
    for a, b in zip(after[0][1], after[1][1]): torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


def test_the_thread_chooser_runs_inside_train_and_changes_no_result(shards, tmp_path, monkeypatch):
    """On two threads, `train` probes one and two threads with its own steps (ThreadChooser) and keeps the faster;
    the weights match a one-thread run's (the count changes how work is split, not the arithmetic)."""
    import minillm.training as tr
    made, real = [], tr.ThreadChooser
    def spy(most, **kw):
        made.append(c := real(most, probe=2, every_s=0.0, **kw)); return c   # probe after every probe
    monkeypatch.setattr(tr, 'ThreadChooser', spy)
    args = dict(data_dir=str(shards), epochs=1, batch_size=8, learning_rate=3e-3, model='tiny', n_layer=1, n_embd=32,
                n_head=2, block_size=16, device='cpu', dtype='float32', warmup=5, eval_every=0, progress=False)
    n = torch.get_num_threads()
    try:
        runs = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            s = train(TrainConfig(out_dir=str(tmp_path / f't{threads}'), **args))
            assert s['status'] == 'complete' and s['steps'] == 4000 // 16 // 8
            runs[threads] = weights(tmp_path / f't{threads}')
            assert torch.get_num_threads() == threads                   # the caller's count comes back
    finally: torch.set_num_threads(n)
    assert made[0].counts == [] and made[1].counts == [1, 2]       # one thread: nothing to choose
    assert made[1].best in (1, 2) and made[1].ref > 0                # it probed and chose
    for k in runs[1]: torch.testing.assert_close(runs[2][k], runs[1][k], atol=1e-5, rtol=1e-4)
