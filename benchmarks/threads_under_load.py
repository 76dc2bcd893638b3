"""Training speed of the default model with and without `ThreadChooser`, on a quiet machine and
while other programs keep cores busy.

Each measurement is a fresh process running `minillm.training.train` for `--steps` steps of the
default model (the `TrainConfig` defaults of `minillm train`) on `minillm.testing.write_shards`
tokens in its vocabulary; `chooser` is the loop as shipped, `all threads` replaces the chooser with
an inactive one (every step on all cores, as before the chooser existed). `--busy N` starts N background processes that each keep one
core busy with single-threaded matrix products for the whole measurement (another user's job).
The figure is tokens per second over the run's steps (`summary.json`), median over `--rounds`
alternated rounds.

    python benchmarks/threads_under_load.py --busy 0 1 --rounds 3
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, header  # noqa: E402

BUSY = 'import torch; torch.set_num_threads(1); a = torch.randn(512, 512)\nwhile True: a @ a'


def worker(variant: str, steps: int) -> dict:
    "Train `steps` steps in this process; return the summary."
    import minillm.training as tr
    from minillm.testing import write_shards
    from minillm.tokenizer import DEFAULT_VOCAB_SIZE
    if variant == 'all threads':
        real = tr.ThreadChooser
        tr.ThreadChooser = lambda most, **kw: real(1, **kw)   # inactive: nothing to choose
    cfg = tr.TrainConfig()
    with tempfile.TemporaryDirectory() as d:
        # enough tokens for the steps in one epoch, in the default model's vocabulary
        n_train = (steps + 50) * cfg.batch_size * tr.MODEL_PRESETS['default']['block_size']
        write_shards(d, n_train=n_train, n_val=20_000, vocab_size=DEFAULT_VOCAB_SIZE)
        s = tr.train(tr.TrainConfig(data_dir=d, out_dir=str(Path(d) / 'run'), steps=steps, max_time='',
                                    eval_every=0, progress=False, device='cpu', dtype='float32'))
    return dict(tokens_per_s=s['tokens_per_s'], steps=s['steps'])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--busy', type=int, nargs='+', default=[0, 1], help='background busy processes (each one core)')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--steps', type=int, default=300)
    p.add_argument('--json')
    p.add_argument('--worker', nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1])))); return
    print(header(describe()), flush=True)
    rows = {}
    for busy in a.busy:
        hogs = [subprocess.Popen([sys.executable, '-c', BUSY]) for _ in range(busy)]
        try:
            time.sleep(1 if busy else 0)
            for r in range(a.rounds):
                for variant in ('chooser', 'all threads'):
                    out = subprocess.run([sys.executable, __file__, '--worker', variant, str(a.steps)],
                                         capture_output=True, text=True)
                    if out.returncode: sys.exit(out.stderr[-2000:])
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                    lines = [l for l in out.stderr.splitlines() if l.startswith('threads:')]
                    rows.setdefault((busy, variant), []).append(res['tokens_per_s'])
                    print(f'round {r + 1}, {busy} busy: {variant:11} {res["tokens_per_s"]:9,.0f} tok/s'
                          + (f'   ({lines[-1]})' if lines else ''), flush=True)
        finally:
            for h in hogs: h.kill()
    print('\nmedians:')
    for (busy, variant), v in rows.items():
        print(f'{busy} busy  {variant:11} {statistics.median(v):9,.0f} tok/s  (runs: {", ".join(f"{x:,.0f}" for x in v)})')
    if a.json:
        Path(a.json).write_text(json.dumps(dict(machine=describe(), steps=a.steps, runs={
            f'{b} busy, {v}': xs for (b, v), xs in rows.items()}), indent=1))


if __name__ == '__main__':
    main()
