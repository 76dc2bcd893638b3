"""Training throughput of minillm's loop at nanoGPT's CPU shape, and model-FLOPs utilisation.

nanoGPT's published CPU recipe (shakespeare_char on a laptop: 4 layers, 4 heads, width 128, context 64,
batch 12, float32, vocabulary 65) trains at about 24,000 tokens/s on this project's 2-core reference
machine. This script times the same shape through minillm's own pieces (memory-mapped batches,
`train_step`: forward, backward, clipping, fused AdamW) and reports tokens/s and MFU against the measured
float32 matrix-multiply peak.

    python benchmarks/train_speed.py                  # nano shape, vocab 65 and 4096
    taskset -c 0,1 python benchmarks/train_speed.py   # pinned to 2 cores
"""
import argparse, json, os, time, tempfile
from pathlib import Path

import numpy as np
import torch

from minillm.model import MiniLLM, ModelConfig, flops_per_token
from minillm.training import TrainConfig, get_batch, epoch_windows, make_optimizer, train_step, lr_at


def matmul_peak(n: int = 1024, reps: int = 20) -> float:
    "Measured float32 matmul FLOP/s (best of `reps`)."
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3): a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n ** 3 / best


def _timed(f) -> float:
    t = time.perf_counter(); f(); return time.perf_counter() - t


def loop_speed(vocab: int, steps: int, batch: int, block: int, compile: bool = False) -> float:
    "Tokens per second of the training loop (batches from a memmap, train_step) after a warmup."
    mc = ModelConfig(vocab_size=vocab, block_size=block, n_layer=4, n_head=4, n_kv_head=4, n_embd=128)
    torch.manual_seed(0)
    model = MiniLLM(mc); net = torch.compile(model) if compile else model
    cfg = TrainConfig(batch_size=batch, learning_rate=1e-3, warmup=10)
    opt = make_optimizer(model, cfg, torch.device('cpu'))
    with tempfile.TemporaryDirectory() as d:
        np.random.default_rng(0).integers(0, vocab, 1_000_000).astype(np.uint16).tofile(Path(d) / 'train.bin')
        data = np.memmap(Path(d) / 'train.bin', dtype=np.uint16, mode='r')
        order = epoch_windows(len(data), block, 0, 0)
        def step(i):
            x, y = get_batch(data, order[i * batch:(i + 1) * batch], block)
            return train_step(net, opt, [(x, y)], lr_at(i, steps, cfg), cfg, torch.device('cpu'), 'float32')
        for i in range(10): step(i)
        t = time.perf_counter()
        for i in range(10, 10 + steps): loss = step(i)
        float(loss)
        return steps * batch * block / (time.perf_counter() - t)


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--steps', type=int, default=200)
    ap.add_argument('--batch', type=int, default=12)
    ap.add_argument('--block', type=int, default=64)
    ap.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    ap.add_argument('--compile', action='store_true')
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    peak = matmul_peak()
    rows = []
    for vocab in (65, 4096):
        tps = loop_speed(vocab, a.steps, a.batch, a.block, a.compile)
        mc = ModelConfig(vocab_size=vocab, block_size=a.block, n_layer=4, n_head=4, n_kv_head=4, n_embd=128)
        rows.append(dict(vocab=vocab, tokens_per_s=round(tps), vs_nanogpt_24k=round(tps / 24000, 2),
                         mfu=round(tps * flops_per_token(mc, a.block) / peak, 3)))
    print(json.dumps(dict(threads=torch.get_num_threads(), cpus=len(os.sched_getaffinity(0)),
                          matmul_peak_gflops=round(peak / 1e9, 1), shape='4 layers, 4 heads, width 128, context '
                          f'{a.block}, batch {a.batch}, float32', results=rows), indent=1))
