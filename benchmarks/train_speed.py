"""Training speed of minillm's real step, eager and compiled, on 1 or all threads, and its MFU.

Each measurement is a fresh process that builds the model (`MiniLLM`), the optimizer (`make_optimizer`)
and runs the training loop's step (`get_batch` from a memory-mapped shard, `lr_at`, `train_step`) for
`--steps` steps after `--skip` untimed ones, timing every step; the figure is the median step. The
variants run alternately (A, B, A, B...) for `--rounds` rounds, so a machine whose speed drifts, or
that other programs share, affects them alike. MFU is tokens/s x matmul FLOPs per token (chapter 4's
`flops_per_token`) over the measured float32 matrix-multiply peak (n=2048, median of 5, same threads).

    python benchmarks/train_speed.py                                 # nano and default, eager vs compiled, 2 threads
    python benchmarks/train_speed.py --shapes nano --threads 1 2     # 1 against 2 threads, eager
    python benchmarks/train_speed.py --variants eager --wait-policy default PASSIVE
    python benchmarks/train_speed.py --compile-times                 # compile: a cold cache, then a warm one

Variants: `eager`, `compiled` (`minillm.model.compiled`, as `minillm train --compile`). With a
compiled variant the first round starts from whatever the compile cache holds; `--compile-times`
measures the first step of a run with an empty cache folder, then of a second run with that folder
(the repeat run's compile overhead). OpenMP's wait policy (`--wait-policy`) is read when a process
starts, so each setting is its own process: PASSIVE makes idle threads sleep instead of spinning,
which matters when other programs share the cores.
"""
import argparse, itertools, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, header  # noqa: E402

def _default_shape() -> tuple:
    "minillm's default model, vocabulary and batch, read from the library (not re-typed here)."
    from minillm.model import MODEL_PRESETS
    from minillm.tokenizer import DEFAULT_VOCAB_SIZE
    from minillm.training import TrainConfig
    p = MODEL_PRESETS['default']
    return (DEFAULT_VOCAB_SIZE, p['block_size'], TrainConfig().batch_size,
            {k: p[k] for k in ('n_layer', 'n_head', 'n_kv_head', 'n_embd')})


SHAPES = {  # name: (vocab, context, batch, blocks)
    'nano': (65, 64, 12, dict(n_layer=4, n_head=4, n_kv_head=4, n_embd=128)),  # nanoGPT's CPU recipe
    'default': _default_shape(),  # minillm's default model and batch (today 2 blocks of width 128)
}


def worker(shape: str, variant: str, steps: int, skip: int, peak: bool, cpu_time: bool = False) -> dict:
    "Per-step milliseconds of the real training step at `shape` (one process, one variant)."
    import torch
    from minillm.model import MiniLLM, ModelConfig, compiled, flops_per_token
    from minillm.training import TrainConfig, epoch_windows, get_batch, lr_at, make_optimizer, train_step
    vocab, T, B, blocks = SHAPES[shape]
    mc = ModelConfig(vocab_size=vocab, block_size=T, **blocks)
    cfg = TrainConfig(batch_size=B, learning_rate=1e-3, warmup=10)
    cpu = torch.device('cpu')
    torch.manual_seed(0)
    model = MiniLLM(mc)
    opt = make_optimizer(model, cfg, cpu)
    net = compiled(model) if variant == 'compiled' else model
    with tempfile.TemporaryDirectory() as d:
        np.random.default_rng(0).integers(0, vocab, 2_000_000).astype(np.uint16).tofile(Path(d) / 'train.bin')
        data = np.memmap(Path(d) / 'train.bin', dtype=np.uint16, mode='r')
        order = epoch_windows(len(data), T, 0, 0)
        loss_acc, times, clock = torch.zeros(()), [], time.thread_time if cpu_time else time.perf_counter
        for i in range(skip + steps):
            t0 = clock()
            x, y = get_batch(data, order[i * B:(i + 1) * B], T)
            loss_acc += train_step(net, opt, [(x, y)], lr_at(i, skip + steps, cfg), cfg, cpu, 'float32')
            times.append((clock() - t0) * 1e3)
        float(loss_acc)
    out = dict(times_ms=times, threads=torch.get_num_threads(), flops_per_token=flops_per_token(mc))
    if peak:
        n = 2048; a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(2): a @ b
        ts = []
        for _ in range(5):
            t0 = clock(); a @ b; ts.append(clock() - t0)
        out['peak_flops'] = 2 * n ** 3 / statistics.median(ts)
    return out


def run(shape, variant, threads, policy, steps, skip, peak, cache_dir=None, cpu_time=False) -> dict:
    "One measurement in a fresh process."
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if policy != 'default': env['OMP_WAIT_POLICY'] = policy
    else: env.pop('OMP_WAIT_POLICY', None)
    if cache_dir: env['TORCHINDUCTOR_CACHE_DIR'] = str(cache_dir)
    cmd = [sys.executable, __file__, '--worker', shape, variant, str(steps), str(skip)] + (['--peak'] if peak else [])
    cmd += ['--cpu-time'] if cpu_time else []
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode: raise RuntimeError(f'{shape} {variant} failed:\n{r.stderr[-3000:]}')
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out['process_s'] = time.perf_counter() - t0
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--shapes', nargs='+', default=list(SHAPES), choices=list(SHAPES))
    p.add_argument('--variants', nargs='+', default=['eager', 'compiled'], choices=['eager', 'compiled'])
    p.add_argument('--threads', nargs='+', type=int, default=[2])
    p.add_argument('--wait-policy', nargs='+', default=['default'], choices=['default', 'PASSIVE', 'ACTIVE'])
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--steps', type=int, default=100, help='timed steps per run (default 100)')
    p.add_argument('--skip', type=int, default=10, help='untimed first steps (default 10)')
    p.add_argument('--compile-times', action='store_true', help='only time compiling: empty cache, then warm')
    p.add_argument('--cpu-time', action='store_true',
                   help="time steps with the thread's CPU time (1 thread only): what a free core would do "
                        "when other programs share the machine")
    p.add_argument('--json', type=Path)
    p.add_argument('--worker', nargs=4, help=argparse.SUPPRESS)
    p.add_argument('--peak', action='store_true', help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        shape, variant, steps, skip = a.worker
        print(json.dumps(worker(shape, variant, int(steps), int(skip), a.peak, a.cpu_time))); return 0
    if a.cpu_time and a.threads != [1]: p.error('--cpu-time needs --threads 1 (CPU time adds up the threads)')
    info = describe(a.threads[0])
    print(header(info))
    res = dict(machine=info, clock='thread CPU time' if a.cpu_time else 'wall', args={k: v for k, v in vars(a).items() if k not in ('worker', 'json')}, results=[])
    if a.compile_times:
        for shape in a.shapes:
            with tempfile.TemporaryDirectory(prefix='inductor_') as cache:
                for which in ('cold', 'warm'):
                    out = run(shape, 'compiled', a.threads[0], a.wait_policy[0], 5, 1, False, cache)
                    eager_ms = statistics.median(out['times_ms'][1:])
                    row = dict(shape=shape, cache=which, first_step_s=out['times_ms'][0] / 1e3,
                               compile_overhead_s=(out['times_ms'][0] - eager_ms) / 1e3, process_s=out['process_s'])
                    res['results'].append(row)
                    print(f'{shape:8} compile, {which} cache: first step {row["first_step_s"]:.1f} s '
                          f'(process {row["process_s"]:.1f} s)', flush=True)
    else:
        combos = list(itertools.product(a.shapes, a.variants, a.threads, a.wait_policy))
        runs = {c: [] for c in combos}
        for r in range(a.rounds):
            for c in combos:
                shape, variant, threads, policy = c
                out = run(shape, variant, threads, policy, a.steps, a.skip, peak=True, cpu_time=a.cpu_time)
                med = statistics.median(out['times_ms'][a.skip:])
                vocab, T, B, _ = SHAPES[shape]
                tps = B * T / med * 1e3
                runs[c].append(dict(tokens_per_s=tps, median_ms=med, mfu=tps * out['flops_per_token'] / out['peak_flops'],
                                    peak_gflops=out['peak_flops'] / 1e9))
                print(f'round {r + 1} {shape:8} {variant:9} {threads} thr {policy:8} {tps:9,.0f} tok/s  '
                      f'median {med:7.1f} ms  MFU {runs[c][-1]["mfu"]:.0%} (peak {out["peak_flops"] / 1e9:.0f} GFLOP/s)',
                      flush=True)
        print('\nmedians over rounds:')
        for c, rs in runs.items():
            tps = statistics.median(x['tokens_per_s'] for x in rs)
            mfu = statistics.median(x['mfu'] for x in rs)
            res['results'].append(dict(shape=c[0], variant=c[1], threads=c[2], wait_policy=c[3],
                                       tokens_per_s=tps, mfu=mfu, rounds=rs))
            print(f'{c[0]:8} {c[1]:9} {c[2]} thr {c[3]:8} {tps:9,.0f} tok/s  MFU {mfu:.0%}')
    if a.json: a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
