"""What the test files share: a minillm process, the weights of a run, synthetic books and corpora. (What the book
shares with the tests, such as running a command in-process, token shards and checkpoints to break, and the bad-input
table, is `minillm.testing`; fixtures and the thread pinning are in conftest.py.)"""
import json, os, random, subprocess, sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')  # a child process: one thread


def run_process(*args, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    "Run `python -m minillm ARGS` in a new process (one thread), capturing its output."
    return subprocess.run([sys.executable, '-m', 'minillm', *map(str, args)], env=ENV, capture_output=True, text=True,
                          timeout=timeout, **kw)


def weights(run: Path, name: str = 'last') -> dict:
    "The tensors of checkpoint `name` of the training run `run`."
    return load_file(str(Path(run)/'checkpoints'/name/'model.safetensors'))


def same_weights(a: dict, b: dict) -> bool:
    "Whether two sets of tensors are equal bit for bit."
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def gutenberg(body: str, title='Tiny Book', author='A. Writer', n=1) -> str:
    "A file in the modern Project Gutenberg format around `body`."
    return (f'\ufeffThe Project Gutenberg eBook of {title}\r\n\r\nTitle: {title}\r\n\r\nAuthor: {author}\r\n\r\n'
            f'Release date: January 1, 2000 [eBook #{n}]\r\n\r\n'
            f'*** START OF THE PROJECT GUTENBERG EBOOK {title.upper()} ***\r\n\r\n\r\n'
            + body.replace('\n', '\r\n') +
            f'\r\n\r\n\r\n*** END OF THE PROJECT GUTENBERG EBOOK {title.upper()} ***\r\n\r\n'
            'Updated editions will replace the previous one.\r\n' + 'START: FULL LICENSE\r\n' * 50)


WORDS = ('the of and to a in that it was he his with as for had you not be her on at by which have or '
         'from this him but all she they were my are me one their so an said them we who would been will '
         'no when there if more out up into do any your what has man could other than our some very time '
         'upon about may its only now like little then can should made did us such great before must two '
         'these see know over much down after first good men own never most old shall day where those came '
         'come himself way work life without go make well through being long say might how am too even '
         'king lord heaven earth house night love father mother city river garden voice light darkness').split()


def english(seed: int, n_words: int = 12_000) -> str:
    "Deterministic English-like text: sentences in paragraphs, with punctuation and capitals."
    rng, paras = random.Random(seed), []
    while sum(len(p) for p in paras) < n_words * 5:
        sents = []
        for _ in range(rng.randint(2, 6)):
            ws = rng.choices(WORDS, k=rng.randint(4, 16))
            sents.append(' '.join(ws).capitalize() + rng.choice('.!?;'))
        paras.append(' '.join(sents))
    return '\n\n'.join(paras) + '\n'


SENTENCES = ['the cat sat on the mat and looked at the dog.', 'the dog ran to the door and barked at the cat.',
             'a little bird sang in the green tree by the river.', 'the old man walked home slowly in the rain.',
             'she opened the window and the cold wind came in.', 'he said that the sun was warm and the sky was blue.']


def sentence_cycle(n: int = 600, seed: int = 0) -> list[str]:
    """Two documents of simple English, `n // 4` lines of 4 sentences each.

    The sentences come in a fixed cycle, each line starting at a random place in it. So the next sentence
    follows from the one before, which a transformer sees and a trigram table does not (two tokens back it
    sees the same full stop after several sentences): a trained model beats the counting baselines, as
    validation requires, while a briefly trained one does not."""
    import numpy as np
    rng = np.random.default_rng(seed)
    def line(start): return ' '.join(SENTENCES[(start + j) % len(SENTENCES)].capitalize() for j in range(4))
    return ['\n'.join(line(int(rng.integers(len(SENTENCES)))) for _ in range(n // 4)) for _ in range(2)]


def write_corpus(d: Path, docs: list[str]) -> Path:
    "A corpus in chapter 1's layout (corpus.txt + manifest.json) of `docs`, each split 90/10 at a line end."
    d.mkdir(parents=True, exist_ok=True)
    blob, entries, off = b'', [], 0
    for i, doc in enumerate(docs):
        b = doc.encode(); cut = len(b) * 9 // 10; cut = b.rfind(b'\n', 0, cut) + 1
        entries.append(dict(title=f'doc{i}', author='test', gutenberg_id=i, source='test', bytes=len(b), sha256='0',
                            train=[off, off + cut], val=[off + cut, off + len(b)]))
        sep = '\n\n\x1e\n\n'.encode() if i < len(docs) - 1 else b''
        blob += b + sep; off += len(b) + len(sep)
    (d / 'corpus.txt').write_bytes(blob)
    (d / 'manifest.json').write_text(json.dumps(dict(cleaning_version=1, val_fraction=0.1, split='paragraph', sha256='0',
                                                     documents=entries)))
    return d


def unsafe_calls(files) -> list[str]:
    "Lines of `files` that could run code they read: a shell, eval or exec, unpickling, pickled numpy, yaml.load."
    forbidden = {r'shell\s*=\s*True': 'a shell', r'(?<![\w.])eval\(': 'eval', r'(?<![\w.])exec\(': 'exec',
                 r'pickle\.loads?\(|Unpickler': 'unpickling', r'torch\.load\(': 'torch.load', r'allow_pickle\s*=\s*True': 'pickled numpy',
                 r'os\.system\(|os\.popen\(': 'a shell', r'yaml\.(unsafe_)?load\(': 'yaml.load', r'marshal\.loads?\(': 'marshal',
                 r'(?<![\w.])__import__\(': '__import__', r'^\s*(import pickle|from pickle import)|import .*\bpickle\b': 'the pickle module'}
    import re
    return [f'{Path(p).name}:{i}: {why}: {line.strip()}' for p in files
            for i, line in enumerate(Path(p).read_text().splitlines(), 1)
            for pattern, why in forbidden.items() if re.search(pattern, line)]


PACKAGE_FILES = sorted((ROOT/'minillm').rglob('*.py'))  # what the scan covers: every file of the package
