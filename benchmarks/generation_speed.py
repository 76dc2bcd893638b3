"""How fast does the default model write? The targets: at least 1,000 tokens/s at batch 1 on 2 cores, and at
least 5x the speed of recomputing the whole context at every step, at 512 new tokens.

    python benchmarks/generation_speed.py                          # default model, 2 threads, 512 new tokens
    python benchmarks/generation_speed.py --context 513            # room for all 512: recomputing redoes each
    python benchmarks/generation_speed.py --batch 1 8 --threads 1 2
    python benchmarks/generation_speed.py --no-compile --markdown  # eager only, the table of chapter 6

Speed does not depend on what the weights learned, so the model is a randomly initialised `MiniLLM` of the
preset's shape with the default tokenizer's vocabulary (2048). Every run is chapter 6's `next_tokens`
(the loop `minillm generate` uses), greedy, after a 16-token prompt, for exactly `--new-tokens` tokens
(no stop at end-of-text). Variants:
- `cache`: the static key/value cache, the step run eagerly (the default of `minillm generate`);
- `compiled`: the same with the one-token step compiled (`next_tokens(..., compile=True)`);
- `recompute`: no cache: every step runs the model over the last `block_size` tokens.
With the default context of 64 the cache slides (chapter 6) and recomputing never processes more than
64 tokens a step; `--context 513` gives the model room for all 512 new tokens, so recomputing reprocesses
the whole text each step (the speed-up the cache is usually quoted with). The variants alternate for
`--rounds` rounds; figures are medians. The first compiled run pays for compiling; it is reported apart
and not counted (a warm on-disk cache makes it seconds, an empty one tens of seconds).
"""
import argparse, json, statistics, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, header  # noqa: E402
from minillm.generation import next_tokens
from minillm.model import MODEL_PRESETS, ModelConfig, MiniLLM, count_params
from minillm.tokenizer import DEFAULT_VOCAB_SIZE


CLOCK = time.perf_counter


def seconds(model, prompt, new_tokens: int, use_cache: bool, compile: bool) -> float:
    "Seconds (wall, or this thread's CPU time with --cpu-time) to generate `new_tokens` after `prompt`."
    greedy = lambda logits, ids: logits.argmax(-1)
    t0 = CLOCK()
    for _ in next_tokens(model, prompt, greedy, new_tokens, use_cache, compile): pass
    return CLOCK() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 3)[3],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='default', choices=list(MODEL_PRESETS))
    p.add_argument('--vocab-size', type=int, default=DEFAULT_VOCAB_SIZE,
                   help='the model\'s vocabulary (default: the tokenizer\'s default, %(default)s)')
    p.add_argument('--context', type=int, default=0, help='block_size; 0 keeps the preset\'s (64 for default)')
    p.add_argument('--threads', type=int, nargs='+', default=[2], help='torch threads to try (default 2)')
    p.add_argument('--new-tokens', type=int, default=512)
    p.add_argument('--batch', type=int, nargs='+', default=[1])
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--no-compile', action='store_true', help='leave out the compiled variant')
    p.add_argument('--min-tps', type=float, default=1000.0)
    p.add_argument('--min-speedup', type=float, default=5.0)
    p.add_argument('--markdown', action='store_true', help='print a Markdown table')
    p.add_argument('--cpu-time', action='store_true',
                   help="time with this thread's CPU time, not the wall clock (1 thread only): what a free core "
                        "would do when other programs share the machine")
    p.add_argument('--json', type=Path)
    p.add_argument('--check', action='store_true', help='exit 1 when a target is missed (batch 1, first thread count)')
    a = p.parse_args(argv)
    global CLOCK
    if a.cpu_time:
        if a.threads != [1]: p.error('--cpu-time needs --threads 1 (CPU time adds up the threads)')
        CLOCK = time.thread_time
    shape = dict(MODEL_PRESETS[a.model], **({'block_size': a.context} if a.context else {}))
    cfg = ModelConfig(vocab_size=a.vocab_size, **shape)
    torch.manual_seed(0)
    model = MiniLLM(cfg).eval()
    variants = ['cache'] + ([] if a.no_compile else ['compiled']) + ['recompute']
    print(header(describe(a.threads[0])))
    print(f'{a.model} model, {count_params(cfg) / 1e6:.2f}M parameters, vocabulary {cfg.vocab_size}, '
          f'context {cfg.block_size}, '
          f'{a.new_tokens} new tokens after 16, greedy')
    res = dict(machine=describe(a.threads[0]), clock='thread CPU time' if a.cpu_time else 'wall', model=a.model, params=count_params(cfg), vocab_size=cfg.vocab_size, block_size=cfg.block_size,
               new_tokens=a.new_tokens, results=[])
    for threads in a.threads:
        torch.set_num_threads(threads)
        for batch in a.batch:
            prompt = torch.randint(0, cfg.vocab_size, (batch, 16), generator=torch.Generator().manual_seed(0))
            compile_s = None
            for v in variants:  # warm up each (and compile), untimed
                first = seconds(model, prompt, a.new_tokens, v != 'recompute', v == 'compiled')
                if v == 'compiled': compile_s = first
            runs = {v: [] for v in variants}
            for _ in range(a.rounds):
                for v in variants:
                    s = seconds(model, prompt, a.new_tokens, v != 'recompute', v == 'compiled')
                    runs[v].append(batch * a.new_tokens / s)
            med = {v: statistics.median(r) for v, r in runs.items()}
            row = dict(threads=threads, batch=batch, tokens_per_s=med, runs=runs,
                       speedup=med['cache'] / med['recompute'],
                       compiled_speedup=med.get('compiled', 0) / med['recompute'],
                       compiled_first_run_s=compile_s)
            if compile_s: row['compile_s'] = compile_s - batch * a.new_tokens / med['compiled']
            res['results'].append(row)
            print(f'{threads} thread(s), batch {batch}: ' + ', '.join(f'{v} {med[v]:,.0f}' for v in variants)
                  + f' tok/s; cache {row["speedup"]:.1f}x over recompute'
                  + ('' if a.no_compile else f', compiled {row["compiled_speedup"]:.1f}x; '
                     f'compiling added {row["compile_s"]:.1f} s to the first run'), flush=True)
    r0 = res['results'][0]
    if a.markdown:
        m = r0['tokens_per_s']
        print(f'\n| {a.model} model ({res["params"] / 1e6:.2f}M params, context {cfg.block_size}), batch {r0["batch"]}, '
              f'{a.new_tokens} new tokens, {r0["threads"]} threads | tokens/s |\n|---|---:|\n'
              f'| with the KV cache | {m["cache"]:,.0f} |\n'
              + (f'| with the KV cache, compiled step | {m["compiled"]:,.0f} |\n' if 'compiled' in m else '')
              + f'| recomputing the context each step | {m["recompute"]:,.0f} |\n'
              f'| speed-up of the cache | {r0["speedup"]:.1f}x |'
              + (f'\n| speed-up, compiled | {r0["compiled_speedup"]:.1f}x |' if 'compiled' in m else ''))
    if a.json: a.json.write_text(json.dumps(res, indent=1))
    best = max(r0['tokens_per_s'][v] for v in ('cache', 'compiled') if v in r0['tokens_per_s'])
    ok = best >= a.min_tps and best / r0['tokens_per_s']['recompute'] >= a.min_speedup
    return 1 if a.check and not ok else 0


if __name__ == '__main__':
    sys.exit(main())
