"""How fast does the default model write? (Chapter 5 promises >= 1,000 tokens/s at batch 1 with the cache on
2 cores, and >= 5x the speed of recomputing the whole context each step at 512 new tokens.)

    python benchmarks/generation_speed.py                     # default model, 2 cores, 512 new tokens
    python benchmarks/generation_speed.py --model nano --cores 4 --check
    python benchmarks/generation_speed.py --markdown          # the table shown in the chapter

Speed does not depend on what the weights learned, so the model is a randomly initialised `MiniLLM` of the
preset's shape with the bundled tokenizer's vocabulary size (4096). Decoding is greedy (the cost of a
sampling step is in the model), the prompt is 16 tokens, and every run generates exactly `--new-tokens`
tokens (no stop at end-of-text). With the cache the context slides when it fills (chapter 5); without it,
every step recomputes the last `block_size` tokens. Best of `--repeat` runs.
"""
import argparse, json, os, sys, time

import torch

from minillm.model import MODEL_PRESETS, ModelConfig, MiniLLM, count_params
from minillm.generation import next_tokens


def tokens_per_s(model, new_tokens: int, batch: int, use_cache: bool, repeat: int) -> float:
    prompt = torch.randint(0, model.config.vocab_size, (batch, 16), generator=torch.Generator().manual_seed(0))
    greedy = lambda logits, ids: logits.argmax(-1)
    best = float('inf')
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in next_tokens(model, prompt, greedy, new_tokens, use_cache): pass
        best = min(best, time.perf_counter() - t0)
    return batch * new_tokens / best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='default', choices=list(MODEL_PRESETS))
    p.add_argument('--vocab-size', type=int, default=4096)
    p.add_argument('--cores', type=int, default=2, help='pin the process and torch to this many cores (default 2)')
    p.add_argument('--new-tokens', type=int, default=512)
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--repeat', type=int, default=3)
    p.add_argument('--min-tps', type=float, default=1000.0)
    p.add_argument('--min-speedup', type=float, default=5.0)
    p.add_argument('--markdown', action='store_true', help='print a Markdown table')
    p.add_argument('--check', action='store_true', help='exit 1 when a target is missed')
    a = p.parse_args(argv)
    if hasattr(os, 'sched_setaffinity'):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:a.cores])
    torch.set_num_threads(a.cores)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=a.vocab_size, **MODEL_PRESETS[a.model])
    model = MiniLLM(cfg).eval()
    tokens_per_s(model, 32, a.batch, True, 1)                           # warm up
    cached = tokens_per_s(model, a.new_tokens, a.batch, True, a.repeat)
    recompute = tokens_per_s(model, a.new_tokens, a.batch, False, max(1, a.repeat - 1))
    r = dict(model=a.model, params=count_params(cfg), block_size=cfg.block_size, cores=a.cores, batch=a.batch,
             new_tokens=a.new_tokens, cached_tokens_per_s=round(cached), recompute_tokens_per_s=round(recompute),
             speedup=round(cached / recompute, 1), torch=torch.__version__)
    if a.markdown:
        print(f'| {a.model} model ({r["params"] / 1e6:.2f}M params, context {cfg.block_size}), batch {a.batch}, '
              f'{a.new_tokens} new tokens, {a.cores} cores | tokens/s |\n|---|---:|\n'
              f'| with the KV cache | {r["cached_tokens_per_s"]:,} |\n| recomputing the context each step | '
              f'{r["recompute_tokens_per_s"]:,} |\n| speed-up | {r["speedup"]}x |')
    print(json.dumps(r))
    ok = cached >= a.min_tps and cached / recompute >= a.min_speedup
    return 1 if a.check and not ok else 0


if __name__ == '__main__':
    sys.exit(main())
