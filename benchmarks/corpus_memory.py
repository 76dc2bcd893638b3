"""Memory of the corpus stage does not grow with the size of a book.

Builds a corpus from one synthetic Project Gutenberg-format file of 20 MB and of 200 MB (each in a fresh
process) and prints the peak resident memory of each. Streaming means both peaks are about the same:
the interpreter, minillm's imports and a few buffers, not the book.

    python benchmarks/corpus_memory.py            # 20 and 200 MB
    python benchmarks/corpus_memory.py 20 200 500 # other sizes, in MB

Measured (2026-11, 2-core Linux VM, Python 3.11):
        book   corpus  seconds   MB/s  RSS after import  peak RSS
        20MB     19MB      0.7   28.4             24MiB     27MiB
       200MB    192MB      8.3   24.0             24MiB     27MiB
"""
import json, resource, subprocess, sys, tempfile, time
from pathlib import Path

PARAGRAPH = ('It was the best of times, it was the worst of times, it was the age of wisdom, it was the age\r\n'
             'of foolishness, it was the epoch of belief, it was the epoch of incredulity.  \r\n\r\n\r\n')


def write_book(path: Path, mb: int) -> None:
    "A Gutenberg-format file of about `mb` MB: BOM, header, CRLF lines, blank runs, licence footer."
    with open(path, 'w', encoding='utf-8', newline='') as f:
        f.write('\ufeffThe Project Gutenberg eBook of Big\r\n\r\nTitle: Big\r\n\r\n'
                '*** START OF THE PROJECT GUTENBERG EBOOK BIG ***\r\n\r\n')
        block = PARAGRAPH * 1000
        for _ in range(mb * 2**20 // len(block)): f.write(block)
        f.write('*** END OF THE PROJECT GUTENBERG EBOOK BIG ***\r\n' + 'licence\r\n' * 300)


def measure(book: str, out: str) -> dict:
    "Run in a child process: build the corpus, report peak RSS before and after."
    from minillm.corpus import build_corpus
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    build_corpus(out, files=[book], progress=False)
    return {'seconds': time.perf_counter() - t0, 'rss_before_mib': before / 1024,
            'rss_peak_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(sizes):
    print(f'{"book":>8} {"corpus":>8} {"seconds":>8} {"MB/s":>6} {"RSS after import":>17} {"peak RSS":>9}')
    for mb in sizes:
        with tempfile.TemporaryDirectory() as d:
            book = Path(d)/'big.txt'
            write_book(book, mb)
            code = f'import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); ' \
                   f'import corpus_memory as m; print(json.dumps(m.measure({str(book)!r}, {str(Path(d)/"out")!r})))'
            r = json.loads(subprocess.run([sys.executable, '-c', code], check=True, capture_output=True,
                                          text=True).stdout.splitlines()[-1])
            size = book.stat().st_size / 2**20
            out = (Path(d)/'out'/'corpus.txt').stat().st_size / 2**20
            print(f'{size:6.0f}MB {out:6.0f}MB {r["seconds"]:8.1f} {size / r["seconds"]:6.1f} '
                  f'{r["rss_before_mib"]:14.0f}MiB {r["rss_peak_mib"]:6.0f}MiB')


if __name__ == '__main__':
    main([int(a) for a in sys.argv[1:]] or [20, 200])
