"""Chapter 1, corpus: downloads against a local server, every bad input, the bundled corpus, the contract
that the tokenizer chapter reads (corpus.txt + manifest.json + iter_documents), and flat memory."""
import collections, hashlib, http.server, json, os, subprocess, sys, time, tracemalloc, unicodedata
from pathlib import Path

import pytest
from conftest import local_server  # a mirror on 127.0.0.1
from helpers import gutenberg
from hypothesis import given, settings, strategies as st

import minillm.corpus as corpus
from minillm.core import ExitCode, MinillmError, main
from minillm.corpus import (DOC_SEPARATOR, CleanStats, build_corpus, clean_lines, clean_text, download_book,
                            iter_documents, read_manifest, strip_gutenberg)


BOOK1 = 'CHAPTER I\n\nIt is a truth universally acknowledged.\n\nCHAPTER II\n\nMr. Bennet was among the earliest.\n'
BOOK2 = 'Alice was beginning to get very tired.\n\nSo she was considering, in her own mind.\n'

# path -> (status, content type, body) or a callable for special behaviour
ROUTES = {
    '/cache/epub/1/pg1.txt': (200, 'text/plain; charset=utf-8', gutenberg(BOOK1, 'Pride and Prejudice',
                                                                          'Jane Austen', 1).encode()),
    '/files/2/2-0.txt': (200, 'text/plain', gutenberg(BOOK2, "Alice's Adventures", 'Lewis Carroll', 2).encode()),
    '/cache/epub/3/pg3.txt': (200, 'text/html; charset=utf-8', b'<!DOCTYPE html><html><body>Book</body></html>'),
    '/cache/epub/4/pg4.txt': (200, 'text/plain', b'\n<html><head><title>Moved</title></head></html>'),
    '/cache/epub/5/pg5.txt': (200, 'text/plain', b''),
    '/cache/epub/6/pg6.txt': (200, 'text/plain', b'  \n\n\t \r\n   \n'),
    '/cache/epub/7/pg7.txt': (200, 'text/plain', gutenberg('\n\n   \n').encode()),
    '/cache/epub/8/pg8.txt': (200, 'application/octet-stream', b'PK\x03\x04\x00\x00' + bytes(range(256)) * 8),
    '/cache/epub/12/pg12.txt': (200, 'text/plain', gutenberg('Caf\xe9 cr\xe8me, na\xefve.\n')[1:].encode('latin-1')),
    '/cache/epub/13/pg13.txt': (200, 'text/plain', gutenberg('x' * 50_000 + '\n').encode()),
}


class Handler(http.server.BaseHTTPRequestHandler):
    hits = collections.Counter()
    flaky = collections.Counter()

    def log_message(self, *args): pass

    def do_GET(self):
        Handler.hits[self.path] += 1
        if self.path == '/cache/epub/9/pg9.txt':  # a mirror that never answers in time
            time.sleep(1.0); return self._send(200, 'text/plain', b'too late')
        if self.path == '/cache/epub/10/pg10.txt':  # busy twice, then fine
            Handler.flaky[self.path] += 1
            if Handler.flaky[self.path] <= 2: return self._send(503, 'text/plain', b'busy')
            return self._send(200, 'text/plain', gutenberg(BOOK2, 'Flaky', n=10).encode())
        if self.path == '/cache/epub/15/pg15.txt':  # trickles: a byte every 0.1 s, each read in time
            body = gutenberg('slow ' * 400 + '\n').encode()
            self.send_response(200); self.send_header('Content-Type', 'text/plain')
            self.send_header('Content-Length', str(len(body))); self.end_headers()
            try:
                for i in range(len(body)): self.wfile.write(body[i:i + 1]); self.wfile.flush(); time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError): pass
            return
        if self.path == '/cache/epub/11/pg11.txt': return self._send(500, 'text/plain', b'broken')
        if self.path == '/cache/epub/14/pg14.txt': return self._send(403, 'text/plain', b'forbidden')
        status, ctype, body = ROUTES.get(self.path, (404, 'text/html', b'<html>Not Found</html>'))
        self._send(status, ctype, body)

    def _send(self, status, ctype, body):
        self.send_response(status)
        self.send_header('Content-Type', ctype); self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        try: self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError): pass


@pytest.fixture(scope='module')
def mirror():
    with local_server(Handler) as url: yield url


@pytest.fixture
def small_corpus(tmp_path):
    "An existing corpus in `tmp_path/out`, to check that failed builds leave it untouched."
    (tmp_path/'a.txt').write_text('One paragraph.\n\nAnother paragraph.\n')
    out = tmp_path/'out'
    build_corpus(out, files=[tmp_path/'a.txt'], progress=False)
    return out, {p.name: p.read_bytes() for p in out.iterdir()}


def unchanged(out, before):
    return {p.name: p.read_bytes() for p in out.iterdir()} == before


# ---------------------------------------------------------------- downloads that work

def test_download_build_and_read_back(tmp_path, mirror):
    out = build_corpus(tmp_path/'out', books=[1, 2], mirror=mirror, cache_dir=tmp_path/'cache', progress=False)
    m = read_manifest(out.parent)
    docs = m['documents']
    assert [d['gutenberg_id'] for d in docs] == [1, 2]
    assert docs[0]['title'] == 'Pride and Prejudice' and docs[0]['author'] == 'Jane Austen'
    assert ''.join(iter_documents(out.parent, 'all')) == BOOK1 + BOOK2  # header, licence, \r, BOM all gone
    assert docs[0]['cleaning']['header_lines'] >= 8 and docs[0]['cleaning']['footer_lines'] >= 50
    assert Handler.hits['/cache/epub/2/pg2.txt'] >= 1 and Handler.hits['/files/2/2-0.txt'] >= 1  # fallback form
    for d in docs:
        raw = out.read_bytes()[d['train'][0]:d['val'][1]]
        assert len(raw) == d['bytes'] and hashlib.sha256(raw).hexdigest() == d['sha256']


def test_cache_is_reused_and_verified(tmp_path, mirror):
    cache = tmp_path/'cache'
    p = download_book(1, cache, mirror=mirror)
    hits = Handler.hits['/cache/epub/1/pg1.txt']
    assert download_book(1, cache, mirror='http://127.0.0.1:9') == p  # cached: the network is not touched
    assert Handler.hits['/cache/epub/1/pg1.txt'] == hits
    p.write_text('tampered')  # a damaged cache entry is fetched again
    download_book(1, cache, mirror=mirror)
    assert Handler.hits['/cache/epub/1/pg1.txt'] == hits + 1 and 'Bennet' in p.read_text()


def test_5xx_is_retried_with_backoff(tmp_path, mirror):
    t0 = time.perf_counter()
    build_corpus(tmp_path/'out', books=[10], mirror=mirror, cache_dir=tmp_path/'c', backoff=0.05, progress=False)
    assert Handler.flaky['/cache/epub/10/pg10.txt'] == 3
    assert time.perf_counter() - t0 >= 0.05 + 0.1  # waited 0.05 s, then 0.1 s
    assert next(iter_documents(tmp_path/'out', 'all')) == BOOK2


def test_latin1_fallback_warns_with_the_file_name(tmp_path, mirror):
    with pytest.warns(UserWarning, match=r'pg12\.txt is not valid UTF-8'):
        build_corpus(tmp_path/'out', books=[12], mirror=mirror, cache_dir=tmp_path/'c', progress=False)
    assert ''.join(iter_documents(tmp_path/'out', 'all')) == 'Café crème, naïve.\n'


# ---------------------------------------------------------------- every bad input: one line, exit 2, nothing lost

BAD_BOOKS = [
    (999, 'not found on'),                 # 404 for every URL form
    (3, 'is an HTML page'),                # served as text/html
    (4, 'is an HTML page'),                # HTML served as text/plain
    (5, 'is empty or only whitespace'),
    (6, 'is empty or only whitespace'),
    (7, 'is empty after cleaning'),        # only header and licence
    (8, 'is a binary file'),
    (11, 'HTTP 500 2 times'),              # retried, then given up
    (14, 'HTTP 403'),                      # not retried
]


@pytest.mark.parametrize('book,message', BAD_BOOKS)
def test_bad_downloads(book, message, tmp_path, mirror, small_corpus, capsys, monkeypatch):
    out, before = small_corpus
    monkeypatch.setattr(corpus.time, 'sleep', lambda s: None)
    code = main(['corpus', '--books', str(book), '--mirror', mirror, '--out', str(out), '--cache', str(tmp_path/'c'),
                 '--retries', '1', '--quiet'])
    err = capsys.readouterr().err
    assert code == ExitCode.CORPUS == 2
    assert message in err and err.count('\n') == 1 and err.startswith('minillm corpus: error: ')
    assert unchanged(out, before)
    assert not (tmp_path/'c'/f'pg{book}.txt').exists() or book == 7  # nothing bad was cached
    assert not list((tmp_path/'c').glob('*.tmp')) and not list(out.glob('.*.tmp'))


def test_mirror_that_times_out(tmp_path, mirror, small_corpus):
    out, before = small_corpus
    with pytest.raises(MinillmError, match=r'timed out 2 times \(timeout 0.2s\)') as e:
        build_corpus(out, books=[9], mirror=mirror, cache_dir=tmp_path/'c', timeout=0.2, retries=1, backoff=0.01,
                     progress=False)
    assert e.value.exit_code == ExitCode.CORPUS and unchanged(out, before)


def test_a_trickling_mirror_meets_the_deadline_per_file(tmp_path, mirror, small_corpus):
    "Each read arrives within the timeout, but the file as a whole must arrive within its deadline."
    out, before = small_corpus
    t0 = time.perf_counter()
    with pytest.raises(MinillmError, match=r'in 1 s, the limit for one file: the server is too slow') as e:
        download_book(15, tmp_path/'c', mirror=mirror, timeout=5, retries=0, deadline=1.0)
    assert e.value.exit_code == ExitCode.CORPUS and time.perf_counter() - t0 < 10
    assert not (tmp_path/'c'/'pg15.txt').exists() and unchanged(out, before)


def test_manifest_counts_the_bytes_of_a_single_local_file(tmp_path):
    "The manifest's total is the size of corpus.txt (it was read after the split had moved the file offset)."
    text = '\n\n'.join(f'Paragraph {i} of a book of my own, with some words in it.' for i in range(20_000))  # 1.2 MB: val > 64 kB
    (tmp_path/'mine.txt').write_text(text)
    out = build_corpus(tmp_path/'out', files=[tmp_path/'mine.txt'], progress=False)
    m = read_manifest(out.parent)
    assert m['bytes'] == out.stat().st_size == m['documents'][0]['bytes']

def test_mirror_that_is_down(tmp_path, small_corpus):
    out, before = small_corpus
    with pytest.raises(MinillmError, match='cannot reach') as e:
        build_corpus(out, books=[1], mirror='http://127.0.0.1:9', cache_dir=tmp_path/'c', progress=False)
    assert e.value.exit_code == ExitCode.CORPUS and unchanged(out, before)


def test_size_cap(tmp_path, mirror):
    with pytest.raises(MinillmError, match='over the 0.0 MiB limit'):
        download_book(13, tmp_path/'c', mirror=mirror, max_bytes=10_000)
    assert not (tmp_path/'c'/'pg13.txt').exists()


def test_read_only_output_directory(tmp_path, small_corpus, monkeypatch, capsys):
    out, before = small_corpus
    out.chmod(0o555)
    try:
        if os.geteuid() == 0:  # root ignores permissions: make the probe fail the way it would
            def denied(*a, **k): raise PermissionError(13, 'Permission denied')
            monkeypatch.setattr('minillm.core.tempfile.TemporaryFile', denied)
        assert main(['corpus', '--out', str(out), '--quiet']) == ExitCode.CORPUS
        assert 'is not writable (Permission denied)' in capsys.readouterr().err
    finally: out.chmod(0o755)
    assert unchanged(out, before)


def test_full_disk(tmp_path, small_corpus, monkeypatch, capsys):
    out, before = small_corpus
    Usage = collections.namedtuple('Usage', 'total used free')
    monkeypatch.setattr('shutil.disk_usage', lambda p: Usage(10**9, 10**9 - 1000, 1000))
    assert main(['corpus', '--out', str(out), '--quiet']) == ExitCode.CORPUS
    assert 'not enough free disk' in capsys.readouterr().err and unchanged(out, before)


def test_disk_filling_up_while_writing(tmp_path, small_corpus, monkeypatch):
    out, before = small_corpus
    real = corpus.clean_lines
    def fill(*a, **k):
        yield from real(*a, **k); raise OSError(28, 'No space left on device')
    monkeypatch.setattr(corpus, 'clean_lines', fill)
    with pytest.raises(MinillmError, match='No space left on device'):
        build_corpus(out, progress=False)
    assert unchanged(out, before)


def test_bad_local_files(tmp_path, small_corpus):
    out, before = small_corpus
    (tmp_path/'x.bin').write_bytes(bytes(range(256)))
    (tmp_path/'e.txt').write_text('')
    for f, msg in [('x.bin', 'binary'), ('e.txt', 'empty'), ('missing.txt', 'neither a file nor a folder')]:
        with pytest.raises((MinillmError, OSError), match=msg):
            build_corpus(out, files=[tmp_path/f], progress=False)
        assert unchanged(out, before)


@pytest.mark.parametrize('args', [['--books', 'pride'], ['--books', '0'], ['--books', ','],
                                  ['--val-fraction', '1.5'], []])
def test_usage_errors(args, tmp_path, capsys):
    argv = ['corpus'] + args + (['--out', str(tmp_path)] if args else [])
    code = main(argv) if args else pytest.raises(SystemExit, main, argv).value.code
    assert code == ExitCode.USAGE
    assert capsys.readouterr().err.strip()


def test_exit_code_from_a_real_process(tmp_path, mirror):
    r = subprocess.run([sys.executable, '-m', 'minillm', 'corpus', '--books', '999', '--mirror', mirror,
                        '--out', str(tmp_path/'o'), '--cache', str(tmp_path/'c')], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith('minillm corpus: error: book 999 not found')


# ---------------------------------------------------------------- the bundled corpus and the contract

@pytest.fixture(scope='module')
def bundled(tmp_path_factory):
    out = tmp_path_factory.mktemp('bundled')
    assert main(['corpus', '--out', str(out), '--quiet']) == 0
    return out


def test_bundled_corpus_builds_offline(bundled):
    # speed is measured by benchmarks, not asserted here
    out = bundled
    m = read_manifest(out)
    text = (out/'corpus.txt').read_bytes()
    assert m['sha256'] == hashlib.sha256(text).hexdigest() and m['bytes'] == len(text)
    assert 2_000_000 <= len(text) <= 4_200_000
    assert m['cleaning_version'] == corpus.CLEANING_VERSION and m['val_fraction'] == 0.1
    assert sum(p.stat().st_size for p in corpus.BUNDLED_DIR.glob('*.xz')) < 10 * 2**20
    for d in m['documents']:
        assert set(d) >= {'title', 'author', 'gutenberg_id', 'source', 'bytes', 'sha256', 'train', 'val'}


def test_manifest_ranges_tile_the_corpus(bundled):
    out = bundled
    m, text = read_manifest(out), (out/'corpus.txt').read_bytes()
    pos, sep, paragraphs = 0, DOC_SEPARATOR.encode(), 0
    for i, d in enumerate(m['documents']):
        if i: assert text[pos:pos + len(sep)] == sep; pos += len(sep)
        assert d['train'][0] == pos and d['train'][1] == d['val'][0] and d['val'][1] == pos + d['bytes']
        val = d['val'][1] - d['val'][0]
        assert 0 < val <= 0.2 * d['bytes']                      # about the last tenth
        assert text[d['val'][0] - 1:d['val'][0]] == b'\n'       # cut where a line starts ...
        paragraphs += text[d['val'][0] - 2:d['val'][0]] == b'\n\n'  # ... nearly always a paragraph
        pos = d['val'][1]
    assert pos == len(text) and paragraphs >= len(m['documents']) - 2


def test_iter_documents_splits(bundled):
    out = bundled
    m = read_manifest(out)
    train, val, every = (list(iter_documents(out, s)) for s in ('train', 'val', 'all'))
    assert len(train) == len(val) == len(every) == len(m['documents'])
    assert [t + v for t, v in zip(train, val)] == every
    assert DOC_SEPARATOR.join(every) == (out/'corpus.txt').read_text(encoding='utf-8')
    assert not any(v in t for t, v in zip(train, val))  # no validation paragraph is also trained on


def test_bundled_text_is_clean(bundled):
    text = (bundled/'corpus.txt').read_text(encoding='utf-8')
    assert '\r' not in text and '\ufeff' not in text and '\n\n\n' not in text
    assert unicodedata.is_normalized('NFC', text)
    assert 'PROJECT GUTENBERG' not in text.upper().replace('PROJECT GUTENBERG-TM', '')
    assert not any(line != line.rstrip() for line in text.splitlines())


def test_build_is_deterministic(bundled, tmp_path):
    build_corpus(tmp_path, progress=False)
    assert read_manifest(tmp_path)['sha256'] == read_manifest(bundled)['sha256']


def test_iter_documents_errors(tmp_path):
    with pytest.raises(MinillmError, match='no corpus in') as e: list(iter_documents(tmp_path))
    assert e.value.exit_code == ExitCode.USAGE
    with pytest.raises(MinillmError, match='unknown split'): list(iter_documents(tmp_path, 'test'))


# ---------------------------------------------------------------- cleaning

MARKERS = [
    ('*** START OF THE PROJECT GUTENBERG EBOOK PRIDE AND PREJUDICE ***',
     '*** END OF THE PROJECT GUTENBERG EBOOK PRIDE AND PREJUDICE ***'),
    ("*** START OF THIS PROJECT GUTENBERG EBOOK ALICE'S ADVENTURES IN WONDERLAND ***",
     "*** END OF THIS PROJECT GUTENBERG EBOOK ALICE'S ADVENTURES IN WONDERLAND ***"),
    ('***START OF THE PROJECT GUTENBERG EBOOK FRANKENSTEIN***', '***END OF THE PROJECT GUTENBERG EBOOK FRANKENSTEIN***'),
    ('*** START OF THIS PROJECT GUTENBERG EBOOK THE ADVENTURES OF SHERLOCK HOLMES ***',
     "End of the Project Gutenberg EBook of The Adventures of Sherlock Holmes, by Arthur Conan Doyle"),
    ('*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*',
     "End of Project Gutenberg's Etext of Paradise Lost"),
    ('*END THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*'.replace('*END ', '*END*'),
     'End of The Project Gutenberg Etext of Moby Dick'),
]


@pytest.mark.parametrize('start,end', MARKERS)
def test_marker_variants(start, end):
    lines = ['The Project Gutenberg EBook of X', 'Title: X', '', start, '', 'Chapter 1', '', 'Text.', '', end, 'licence']
    assert clean_text('\n'.join(lines)) == 'Chapter 1\n\nText.\n'


def test_small_print_at_the_end_of_an_old_file():
    body = [f'Line {i} of the book.' for i in range(100)]
    lines = body + ['', '***START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START***', 'legal', 
                    '*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*']
    assert clean_text('\n'.join(lines)) == '\n'.join(body) + '\n'


def test_no_markers_keeps_everything():
    text = '\n'.join(f'Verse {i}' for i in range(2500)) + '\n'  # longer than the header look-ahead
    assert clean_text(text) == text


def test_cleaning_counts():
    s = CleanStats()
    clean_text(ROUTES['/cache/epub/1/pg1.txt'][2].decode(), s)
    assert s.crlf_lines > 10 and s.header_lines == 9 and s.footer_lines == 53  # the BOM went with the header
    s = CleanStats()
    assert clean_text('\ufeffHi\r\n', s) == 'Hi\n' and (s.bom, s.crlf_lines) == (1, 1)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('ab é\u0301\r\n\t\ufeff*')), max_size=200))
def test_cleaning_properties(text):
    once = clean_text(text)
    assert clean_text(once) == once                       # idempotent
    assert '\r' not in once and '\ufeff' not in once and '\n\n\n' not in once
    assert unicodedata.is_normalized('NFC', once)
    assert once == '' or (once.endswith('\n') and not once.startswith('\n'))


def test_streaming_memory_is_flat(tmp_path):
    "Cleaning a file allocates the same at 2 MB and 8 MB: memory does not grow with the file."
    para = 'It was the best of times, it was the worst of times, it was the age of wisdom.\n' * 4 + '\n'
    peaks = []
    for mb in (2, 8):
        p = tmp_path/f'{mb}.txt'
        p.write_text(gutenberg(para * (mb * 2**20 // len(para))))
        tracemalloc.start()
        n = sum(1 for _ in clean_lines(p))
        peaks.append(tracemalloc.get_traced_memory()[1]); tracemalloc.stop()
        assert n > 1000
    assert peaks[1] < 1.2 * peaks[0] and peaks[1] < 8 * 2**20, peaks


def test_cli_downloads_from_a_local_mirror(tmp_path, mirror, capsys):
    code = main(['corpus', '--books', '1,2', '--mirror', mirror, '--out', str(tmp_path/'o'),
                 '--cache', str(tmp_path/'c'), '--val-fraction', '0.3'])
    out = capsys.readouterr()
    assert code == 0 and 'wrote' in out.out and '2 documents' in out.out
    assert 'download' in out.err  # the one progress bar over bytes
    m = read_manifest(tmp_path/'o')
    assert m['val_fraction'] == 0.3 and [d['gutenberg_id'] for d in m['documents']] == [1, 2]
