"""Chapter 2, tokenizer: exact round trip for any text, shards that match their corpus and tokenizer,
and one-line errors with exit code 3 (or 1 for a missing prerequisite) for bad input."""
import json, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from helpers import english
from minillm.core import ExitCode, MinillmError, sha256_file
from minillm.corpus import build_corpus, iter_documents
from minillm.testing import run_cli
from minillm.tokenizer import (DEFAULT_VOCAB_SIZE, N_RESERVED, Tokenizer, check_shards, encode_shards, load_shard,
                               read_meta, train_tokenizer, training_lines)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp('corpus')
    files = []
    for i in range(3):
        text = english(i)
        if i == 2: text += '\n\n' + 'Zanzibarquux ' * 400 + '\n'  # the tail of this book is validation
        (d/f'book{i}.txt').write_text(text); files.append(d/f'book{i}.txt')
    build_corpus(d/'c', files=files, progress=False)
    return d/'c'


@pytest.fixture(scope='module')
def data(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('data')
    encode_shards(corpus, train_tokenizer(corpus, out, 600), out, progress=False)
    return out


@pytest.fixture(scope='module')
def tok(data) -> Tokenizer:
    return Tokenizer.load(data)


# ---- the tokenizer ---------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_round_trip_any_unicode(tok, s):
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.encode_array(s).tolist() == ids  # the word-cache path gives the same ids
    assert tok.encode_batch([s, s]) == [ids, ids]


# texts made of the characters where word splitting could go wrong: spaces, newlines, the '▁' symbol
tricky = st.lists(st.sampled_from(list(' \n\u2581\t\r') + ['the', 'a', 'é', '東', '🙂', 'The']), max_size=30).map(''.join)

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(tricky, min_size=1, max_size=5))
def test_word_cache_matches_sentencepiece_across_calls(tok, texts):
    for s in texts:  # the cache carries words from one call to the next
        ids = tok.encode(s)
        assert tok.encode_array(s).tolist() == ids
        if '\u2581' not in s: assert ids == tok.sp.encode(s)  # exactly SentencePiece's own encoding
        assert tok.decode(ids) == s


def test_fixed_special_ids_and_default(tok):
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id, tok.newline_id) == (0, 1, 2, 3, 4)
    assert [tok.sp.id_to_piece(i) for i in range(5)] == ['<unk>', '<s>', '</s>', '<pad>', '\n']
    assert tok.sp.id_to_piece(5) == '<0x00>' and tok.vocab_size == 600
    assert 512 <= DEFAULT_VOCAB_SIZE <= 8192
    assert tok.decode(np.array([tok.bos_id, *tok.encode('hi there'), tok.eos_id, tok.pad_id])) == 'hi there'


def test_trains_on_the_train_split_only(tok):
    # 'Zanzibarquux' fills the validation tail of one book and appears nowhere in the training text
    assert not any('Zanzibar' in tok.sp.id_to_piece(i) for i in range(tok.vocab_size))
    assert len(tok.encode(' Zanzibarquux')) > 3


def test_training_is_deterministic(corpus, tmp_path, data):
    a = train_tokenizer(corpus, tmp_path/'a', 600)
    assert a.read_bytes() == (data/'tokenizer.model').read_bytes()
    b = train_tokenizer(corpus, tmp_path/'b', 500, model_type='unigram')
    t = Tokenizer.load(b)
    assert t.decode(t.encode('Unigram, too: naïve ▁ text\n')) == 'Unigram, too: naïve ▁ text\n'


def test_sampling_caps_training_text(corpus, tmp_path):
    all_lines = list(training_lines(corpus))
    some = list(training_lines(corpus, keep=0.1, seed=0))
    assert some == list(training_lines(corpus, keep=0.1, seed=0))  # the sample is seeded
    assert 0.05 * len(all_lines) < len(some) < 0.15 * len(all_lines)
    path = train_tokenizer(corpus, tmp_path, 400, max_train_bytes=20_000)
    assert Tokenizer.load(path).vocab_size == 400


# ---- shards ----------------------------------------------------------------------------------------

def test_shards_hold_every_document_then_eos(corpus, data, tok):
    meta = read_meta(data)
    assert set(meta) >= {'vocab_size', 'dtype', 'train_tokens', 'val_tokens', 'train_bytes', 'val_bytes',
                         'tokenizer_sha256', 'corpus_sha256', 'corpus_dir'}
    assert meta['dtype'] == 'uint16' and meta['vocab_size'] == 600
    assert meta['tokenizer_sha256'] == sha256_file(data/'tokenizer.model')
    assert meta['corpus_sha256'] == sha256_file(corpus/'corpus.txt')
    for split in ('train', 'val'):
        docs = list(iter_documents(corpus, split))
        want = [i for d in docs for i in tok.encode(d) + [tok.eos_id]]
        ids = load_shard(data, split)
        assert ids.dtype == np.uint16 and ids.tolist() == want
        assert meta[f'{split}_tokens'] == len(want)
        assert meta[f'{split}_bytes'] == sum(len(d.encode()) for d in docs)
    assert check_shards(data, data/'tokenizer.model') == meta


def test_shards_refuse_another_tokenizer(corpus, data, tmp_path):
    other = train_tokenizer(corpus, tmp_path, 500)
    with pytest.raises(MinillmError, match='another tokenizer') as e: check_shards(data, other)
    assert e.value.exit_code == ExitCode.TOKENIZER
    with pytest.raises(MinillmError) as e: check_shards(data, tmp_path, exit_code=ExitCode.TRAINING)
    assert e.value.exit_code == ExitCode.TRAINING  # callers choose the exit code of their own stage


def test_truncated_shard_is_caught(data, tmp_path):
    import shutil
    d = shutil.copytree(data, tmp_path/'d')
    (d/'val.bin').write_bytes((d/'val.bin').read_bytes()[:-2])
    with pytest.raises(MinillmError, match='truncated'): check_shards(d)
    (d/'meta.json').write_text('{"vocab_size": 600')
    with pytest.raises(MinillmError, match='not valid JSON') as e: check_shards(d, exit_code=ExitCode.TRAINING)
    assert e.value.exit_code == ExitCode.TRAINING
    (d/'meta.json').unlink()
    with pytest.raises(MinillmError, match='meta.json is missing') as e: read_meta(d)
    assert e.value.exit_code == ExitCode.USAGE


# ---- bad input through the command line -------------------------------------------------------------

def test_cli_trains_and_encodes(corpus, tmp_path):
    code, _, err = run_cli(['tokenizer', '--corpus', corpus, '--vocab-size', 500, '--out', tmp_path, '--quiet'])
    assert code == 0, err
    assert {p.name for p in tmp_path.iterdir()} >= {'tokenizer.model', 'train.bin', 'val.bin', 'meta.json'}
    assert check_shards(tmp_path, tmp_path)['vocab_size'] == 500


def test_missing_corpus(tmp_path):
    code, _, err = run_cli(['tokenizer', '--corpus', tmp_path/'nope', '--out', tmp_path/'o'])
    assert code == ExitCode.USAGE and 'no corpus in' in err and err.count('\n') == 1


def test_empty_corpus(tmp_path):
    (tmp_path/'corpus.txt').write_text('')
    (tmp_path/'manifest.json').write_text(json.dumps({'documents': []}))
    code, _, err = run_cli(['tokenizer', '--corpus', tmp_path, '--out', tmp_path/'o'])
    assert code == ExitCode.TOKENIZER and 'no training text' in err and err.count('\n') == 1


def test_vocab_too_large_says_the_largest(corpus, tmp_path):
    (tmp_path/'tokenizer.model').write_bytes(b'keep me')
    code, _, err = run_cli(['tokenizer', '--corpus', corpus, '--vocab-size', 50_000, '--out', tmp_path])
    assert code == ExitCode.TOKENIZER and err.count('\n') == 1, err
    largest = int(err.split('at most ')[1].split()[0])
    assert N_RESERVED < largest < 50_000
    assert (tmp_path/'tokenizer.model').read_bytes() == b'keep me'  # nothing destroyed
    assert train_tokenizer(corpus, tmp_path/'ok', largest).exists()  # and the size it names works


def test_vocab_below_reserved(corpus, tmp_path):
    code, _, err = run_cli(['tokenizer', '--corpus', corpus, '--vocab-size', 100, '--out', tmp_path])
    assert code == ExitCode.TOKENIZER and '261 ids are reserved' in err


def test_corrupt_model(tmp_path):
    (tmp_path/'tokenizer.model').write_bytes(b'\x00garbage' * 10)
    with pytest.raises(MinillmError, match='not a SentencePiece model') as e: Tokenizer.load(tmp_path)
    assert e.value.exit_code == ExitCode.TOKENIZER and '\n' not in str(e.value)
    with pytest.raises(MinillmError, match='no tokenizer at') as e: Tokenizer.load(tmp_path/'missing.model')
    for broken in [b'', Path(__file__).read_bytes()]:  # an empty file, a text file
        (tmp_path/'x.model').write_bytes(broken)
        with pytest.raises(MinillmError, match='not a SentencePiece model'): Tokenizer.load(tmp_path/'x.model')


def test_truncated_model(data, tmp_path):
    (tmp_path/'t.model').write_bytes((data/'tokenizer.model').read_bytes()[:3000])
    with pytest.raises(MinillmError, match='not a SentencePiece model') as e: Tokenizer.load(tmp_path/'t.model')
    assert e.value.exit_code == ExitCode.TOKENIZER


def test_python_m_minillm_exit_code(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'minillm', 'tokenizer', '--corpus', str(tmp_path), '--out',
                        str(tmp_path/'o')], capture_output=True, text=True, timeout=120)
    assert r.returncode == ExitCode.USAGE and 'minillm tokenizer: error: no corpus' in r.stderr


def test_uint32_shards_above_65535_tokens(corpus, data, tmp_path, monkeypatch):
    import minillm.tokenizer as T
    real = T.Tokenizer.load.__func__
    def big(cls, path, *a, **k):  # pretend the vocabulary is larger than uint16 can count
        t = real(cls, path, *a, **k); t.vocab_size = 70_000; return t
    monkeypatch.setattr(T.Tokenizer, 'load', classmethod(big))
    meta = encode_shards(corpus, data/'tokenizer.model', tmp_path, progress=False)
    assert meta['dtype'] == 'uint32' and (tmp_path/'train.bin').stat().st_size == 4 * meta['train_tokens']
    assert load_shard(tmp_path, 'train').tolist() == load_shard(data, 'train').tolist()
