"""How fast does `encode_shards` turn text into token shards? (Chapter 2 promises at least 5 MB/s on 2 cores.)

    python benchmarks/tokenizer_speed.py                 # the bundled corpus, 2 cores, 3 runs
    python benchmarks/tokenizer_speed.py --scale 4       # the corpus repeated 4 times (a warmer word cache)
    python benchmarks/tokenizer_speed.py --corpus data/corpus --cores 4 --check

Prints one line per run and a JSON summary; `--check` exits 1 when the best run is below `--min-mbps`.
The baseline is SentencePiece's own batch encoding of the same documents on the same cores.
"""
import argparse, json, os, statistics, sys, tempfile, time
from pathlib import Path

from minillm.corpus import build_corpus, iter_documents, write_corpus
from minillm.tokenizer import DEFAULT_VOCAB_SIZE, Tokenizer, encode_shards, train_tokenizer


def scaled_corpus(src: Path, scale: int, work: Path) -> Path:
    "The corpus `src` with every document repeated `scale` times, as a new corpus."
    if scale == 1: return src
    files = []
    for i, doc in enumerate(iter_documents(src, 'all')):
        (work/f'doc{i}.txt').write_text(doc * scale); files.append(({'title': f'doc {i}'}, work/f'doc{i}.txt'))
    (work/'scaled').mkdir(); write_corpus(work/'scaled', files); return work/'scaled'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--corpus', help='a corpus directory (default: build the bundled corpus in a temp dir)')
    p.add_argument('--vocab-size', type=int, default=DEFAULT_VOCAB_SIZE)
    p.add_argument('--cores', type=int, default=2, help='pin this process to this many cores (default 2)')
    p.add_argument('--scale', type=int, default=1, help='repeat each document this many times')
    p.add_argument('--repeat', type=int, default=3)
    p.add_argument('--min-mbps', type=float, default=5.0)
    p.add_argument('--check', action='store_true', help='exit 1 when the best run is below --min-mbps')
    a = p.parse_args(argv)
    if hasattr(os, 'sched_setaffinity'):
        cores = sorted(os.sched_getaffinity(0))[:a.cores]
        os.sched_setaffinity(0, cores)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = Path(a.corpus) if a.corpus else build_corpus(work/'corpus', progress=False).parent
        corpus = scaled_corpus(corpus, a.scale, work)
        t0 = time.perf_counter(); model = train_tokenizer(corpus, work/'tok', a.vocab_size)
        train_s = time.perf_counter() - t0
        runs = []
        for r in range(a.repeat):
            t0 = time.perf_counter()
            meta = encode_shards(corpus, model, work/f'shards{r}', progress=False)
            dt = time.perf_counter() - t0
            mb = (meta['train_bytes'] + meta['val_bytes']) / 1e6
            runs.append(mb / dt)
            print(f'run {r + 1}: {mb:.2f} MB in {dt:.2f} s = {mb / dt:.2f} MB/s', file=sys.stderr)
        tok, docs = Tokenizer.load(model), list(iter_documents(corpus, 'all'))
        t0 = time.perf_counter(); tok.sp.encode(docs, num_threads=tok.num_threads); sp_s = time.perf_counter() - t0
        summary = dict(cores=len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(),
                       corpus_mb=round(mb, 2), vocab_size=a.vocab_size, train_seconds=round(train_s, 2),
                       encode_mbps_best=round(max(runs), 2), encode_mbps_median=round(statistics.median(runs), 2),
                       sentencepiece_batch_mbps=round(mb / sp_s, 2), load_average=os.getloadavg()[0])
    print(json.dumps(summary))
    ok = summary['encode_mbps_best'] >= a.min_mbps
    print(f'{"ok" if ok else "SLOW"}: best {summary["encode_mbps_best"]} MB/s '
          f'(goal {a.min_mbps} MB/s on {summary["cores"]} cores)', file=sys.stderr)
    return 0 if ok or not a.check else 1


if __name__ == '__main__':
    sys.exit(main())
