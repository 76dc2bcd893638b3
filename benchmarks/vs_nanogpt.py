"""minillm against nanoGPT at nanoGPT's own CPU recipe, side by side in one run.

nanoGPT's README trains its Shakespeare character model on a laptop CPU with

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
        --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
        --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

(4 layers, 4 heads, width 128, context 64, batch 12, 65 characters, float32). This script runs that
command from a nanoGPT checkout you give it (nothing of nanoGPT is copied here), and minillm's
training step at the same shape, alternately, `--rounds` times, and prints the median tokens per
second of each and their ratio.

    git clone https://github.com/karpathy/nanoGPT /tmp/nanogpt
    python benchmarks/vs_nanogpt.py /tmp/nanogpt --text input.txt           # Tiny Shakespeare
    python benchmarks/vs_nanogpt.py /tmp/nanogpt --text input.txt --compile # also minillm compiled
    python benchmarks/vs_nanogpt.py /tmp/nanogpt --text input.txt --bf16    # also bfloat16 autocast
    python benchmarks/vs_nanogpt.py /tmp/nanogpt --text input.txt --threads 1 --json out.json

How each figure is taken, the same way for both:
- the data: nanoGPT's `data/shakespeare_char/prepare.py` downloads Tiny Shakespeare; here its
  `train.bin`, `val.bin` and `meta.pkl` are built from `--text` exactly as prepare.py does
  (sorted characters, first 90% train, uint16) in a temporary folder, which both programs read;
- nanoGPT: its `train.py` prints `iter N: loss L, time T ms` for every iteration; the figure is
  batch x context / the median of T over `--iters` iterations after the first `--skip`;
- minillm: a fresh process builds the model (`MiniLLM`), the optimizer (`make_optimizer`) and runs
  the real loop's step (`get_batch` from the memory-mapped shard, `lr_at`, `train_step`, the loss
  summed on the device), timing every step; the figure is the median over the same iterations.
  With `--compile` a third process does the same with the model compiled as `minillm train
  --compile` does, and reports its compile time (the first step) apart. With `--bf16` another runs
  the eager step in bfloat16 autocast, as `minillm train` does where its probe finds bfloat16 faster
  (CPUs with AMX or AVX512-BF16);
- both processes get the same number of threads (`OMP_NUM_THREADS`, `--threads`).
"""
import argparse, json, os, pickle, re, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, header  # noqa: E402

SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12)
RECIPE = ['--device=cpu', '--compile=False', '--eval_iters=20', '--log_interval=1', '--block_size=64',
          '--batch_size=12', '--n_layer=4', '--n_head=4', '--n_embd=128', '--dropout=0.0']


def prepare_chars(text_path: Path, out: Path) -> int:
    "nanoGPT's shakespeare_char/prepare.py, minus the download: train.bin, val.bin, meta.pkl in `out`."
    data = text_path.read_text(encoding='utf-8')
    chars = sorted(set(data))
    stoi = {ch: i for i, ch in enumerate(chars)}
    n = len(data)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (('train', data[:int(n * 0.9)]), ('val', data[int(n * 0.9):])):
        np.array([stoi[c] for c in part], dtype=np.uint16).tofile(out / f'{name}.bin')
    meta = dict(vocab_size=len(chars), itos={i: ch for i, ch in enumerate(chars)}, stoi=stoi)
    with open(out / 'meta.pkl', 'wb') as f: pickle.dump(meta, f)  # nanoGPT's format (written, never read here)
    return len(chars)


def nanogpt_commit(repo: Path) -> str:
    r = subprocess.run(['git', '-C', str(repo), 'rev-parse', 'HEAD'], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else 'unknown (not a git checkout)'


def median_of(times_ms: list, skip: int, iters: int) -> tuple[float, int]:
    "Median of the per-step times after the first `skip`, over at most `iters` of them; and how many."
    kept = times_ms[skip:skip + iters]
    if not kept: raise RuntimeError(f'no step times after the first {skip}')
    return statistics.median(kept), len(kept)


def run_nanogpt(repo: Path, work: Path, steps: int, env: dict) -> list[float]:
    "Run nanoGPT's train.py with its CPU recipe in `work` (which holds data/); its per-iteration ms."
    cmd = [sys.executable, str(repo / 'train.py'), str(repo / 'config' / 'train_shakespeare_char.py'), *RECIPE,
           f'--max_iters={steps}', f'--lr_decay_iters={steps}', f'--out_dir={work / "out"}']
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if r.returncode: raise RuntimeError(f'nanoGPT failed ({r.returncode}):\n{r.stderr[-2000:]}')
    return [float(ms) for ms in re.findall(r'^iter \d+: loss [\d.]+, time ([\d.]+)ms', r.stdout, re.M)]


def run_minillm(data: Path, vocab: int, steps: int, compile: bool, env: dict, dtype='float32') -> dict:
    "Time minillm's training step in a fresh process (see `worker`); its per-step ms."
    cmd = [sys.executable, __file__, '--worker', str(data), '--vocab', str(vocab), '--steps', str(steps),
           '--dtype', dtype]
    cmd += ['--compile'] if compile else []
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode: raise RuntimeError(f'minillm failed ({r.returncode}):\n{r.stderr[-2000:]}')
    return json.loads(r.stdout.strip().splitlines()[-1])


def worker(data: Path, vocab: int, steps: int, compile: bool, dtype: str = 'float32') -> dict:
    "The real training loop's step at nanoGPT's shape on the character shard: ms per step."
    import torch
    from minillm.model import MiniLLM, ModelConfig, compiled
    from minillm.training import TrainConfig, epoch_windows, get_batch, lr_at, make_optimizer, train_step
    if os.environ.get('OMP_NUM_THREADS'): torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    train = np.memmap(data / 'train.bin', dtype=np.uint16, mode='r')
    B, T = SHAPE['batch_size'], SHAPE['block_size']
    cfg = TrainConfig(batch_size=B, learning_rate=1e-3, warmup=100, min_lr=1e-4, compile=compile,
                      optimizer='adamw')  # nanoGPT's optimizer: like for like
    mc = ModelConfig(vocab_size=vocab, block_size=T, n_layer=SHAPE['n_layer'], n_head=SHAPE['n_head'],
                     n_kv_head=SHAPE['n_head'], n_embd=SHAPE['n_embd'], dropout=0.0)
    torch.manual_seed(1337)
    cpu = torch.device('cpu')
    model = MiniLLM(mc)
    opt = make_optimizer(model, cfg, cpu)
    net = compiled(model) if compile else model
    net.train()
    order = epoch_windows(len(train), T, cfg.seed, 0)
    loss_acc, times = torch.zeros(()), []
    for step in range(steps):
        t0 = time.perf_counter()
        x, y = get_batch(train, order[step * B:(step + 1) * B], T)
        loss_acc += train_step(net, opt, [(x, y)], lr_at(step, steps, cfg), cfg, cpu, dtype)
        times.append((time.perf_counter() - t0) * 1e3)
    return dict(times_ms=times, final_loss=float(loss_acc) / steps, threads=torch.get_num_threads())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('nanogpt', nargs='?', type=Path, help="a nanoGPT checkout (its train.py, model.py, config/)")
    p.add_argument('--text', type=Path, help='Tiny Shakespeare (char-rnn input.txt)')
    p.add_argument('--rounds', type=int, default=3, help='alternations of nanoGPT and minillm (default 3)')
    p.add_argument('--iters', type=int, default=250, help='timed iterations per run (default 250)')
    p.add_argument('--skip', type=int, default=10, help='first iterations not timed (default 10)')
    p.add_argument('--threads', type=int, default=2, help='torch/OpenMP threads for both (default 2)')
    p.add_argument('--compile', action='store_true', help='also time minillm compiled (minillm train --compile)')
    p.add_argument('--bf16', action='store_true', help='also time minillm eager in bfloat16 autocast')
    p.add_argument('--json', type=Path, help='also write the results here')
    p.add_argument('--dtype', default='float32', help=argparse.SUPPRESS)
    p.add_argument('--worker', type=Path, help=argparse.SUPPRESS)
    p.add_argument('--steps', type=int, help=argparse.SUPPRESS)
    p.add_argument('--vocab', type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.vocab, a.steps, a.compile, a.dtype))); return 0
    if not a.nanogpt or not (a.nanogpt / 'train.py').is_file() or not a.text or not a.text.is_file():
        p.error('give a nanoGPT checkout (holding train.py) and --text input.txt')
    steps = a.skip + a.iters
    if steps <= 100: p.error('--skip + --iters must exceed 100: nanoGPT warms its rate up over 100 iterations')
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    info = dict(describe(a.threads), nanogpt_commit=nanogpt_commit(a.nanogpt), shape=SHAPE, dtype='float32',
                rounds=a.rounds, iters=a.iters, skip=a.skip)
    print(header(info)); print(f'nanoGPT {info["nanogpt_commit"]} at {a.nanogpt}')
    tokens = SHAPE['batch_size'] * SHAPE['block_size']
    runs = ({'nanogpt': [], 'minillm': []} | ({'minillm_compiled': []} if a.compile else {})
            | ({'minillm_bf16': []} if a.bf16 else {}))
    compile_s = []
    with tempfile.TemporaryDirectory(prefix='vs_nanogpt_') as tmp:
        work = Path(tmp); data = work / 'data' / 'shakespeare_char'
        vocab = prepare_chars(a.text, data)
        (work / 'configurator.py').symlink_to(a.nanogpt / 'configurator.py')  # train.py reads it from its cwd
        print(f'data: {a.text} -> {vocab} characters; {a.rounds} rounds of {a.iters} timed iterations after {a.skip}')
        for r in range(a.rounds):
            for name in runs:
                t0 = time.perf_counter()
                if name == 'nanogpt': ms = run_nanogpt(a.nanogpt, work, steps, env)
                else:
                    out = run_minillm(data, vocab, steps, name == 'minillm_compiled', env,
                                      'bfloat16' if name == 'minillm_bf16' else 'float32')
                    ms = out['times_ms']
                    if name == 'minillm_compiled': compile_s.append(ms[0] / 1e3)
                med, n = median_of(ms, a.skip, a.iters)
                runs[name].append(dict(tokens_per_s=tokens / med * 1e3, median_ms=med, steps_timed=n,
                                       min_ms=min(ms[a.skip:]), max_ms=max(ms[a.skip:]),
                                       wall_s=round(time.perf_counter() - t0, 1)))
                print(f'round {r + 1} {name:17} {tokens / med * 1e3:9,.0f} tok/s  (median {med:.1f} ms '
                      f'of {n} steps; run {runs[name][-1]["wall_s"]} s)', flush=True)
    med = {k: statistics.median(x['tokens_per_s'] for x in v) for k, v in runs.items()}
    res = dict(info, runs=runs, median_tokens_per_s=med,
               ratio=med['minillm'] / med['nanogpt'],
               ratio_per_round=[m['tokens_per_s'] / n['tokens_per_s'] for m, n in zip(runs['minillm'], runs['nanogpt'])])
    print(f'\nmedian tokens/s: nanoGPT {med["nanogpt"]:,.0f}, minillm {med["minillm"]:,.0f}: '
          f'ratio {res["ratio"]:.2f}x (per round {", ".join(f"{x:.2f}" for x in res["ratio_per_round"])})')
    if a.compile:
        res['ratio_compiled'] = med['minillm_compiled'] / med['nanogpt']
        res['compile_s'] = compile_s
        print(f'minillm compiled {med["minillm_compiled"]:,.0f} tok/s: ratio {res["ratio_compiled"]:.2f}x; '
              f'compile (first step) {", ".join(f"{s:.1f}" for s in compile_s)} s (the first round may be cold)')
    if a.bf16:
        res['ratio_bf16'] = med['minillm_bf16'] / med['nanogpt']
        print(f'minillm bfloat16 autocast {med["minillm_bf16"]:,.0f} tok/s: ratio {res["ratio_bf16"]:.2f}x')
    if a.json: a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
