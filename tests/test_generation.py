"Generation: loading, sampling sets, cache == no cache, streaming with byte fallback, validate, evaluate, CLI exit codes."
import json, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import SENTENCES, sentence_cycle, write_corpus
from minillm.core import ExitCode, MinillmError
from minillm.testing import run_cli
from minillm.model import MiniLLM, ModelConfig
from minillm.checkpoint import save_model
from minillm.tokenizer import Tokenizer, train_tokenizer, encode_shards
from minillm.checkpoint import load
from minillm.generation import (ValidateConfig, generate, stream, filter_logits, pick_next, next_tokens, token_nll, validate,
                                evaluate, StreamDecoder, check_report)

def make_corpus(d: Path, n: int = 600, seed: int = 0) -> Path:
    "A corpus in chapter 1's layout of `sentence_cycle` text: a transformer beats counting on it, a trigram cannot."
    return write_corpus(d, sentence_cycle(n, seed))


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    "Token shards of a small English corpus with a 400-token SentencePiece model."
    root = tmp_path_factory.mktemp('gen')
    corpus = make_corpus(root / 'corpus')
    from minillm.corpus import iter_documents
    assert len(list(iter_documents(corpus, 'train'))) == 2   # a broken corpus reader fails here, never skips
    out = root / 'data'
    encode_shards(corpus, train_tokenizer(corpus, out, vocab_size=400), out, progress=False)
    return out


def random_checkpoint(d: Path, data: Path, block_size: int = 32, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    tok = Tokenizer.load(data)
    m = MiniLLM(ModelConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_kv_head=1, n_embd=32))
    save_model(m, d)
    (d / 'tokenizer.model').write_bytes((data / 'tokenizer.model').read_bytes())
    (d / 'train_config.json').write_text(json.dumps(dict(data_dir=str(data))))
    return d


@pytest.fixture(scope='module')
def untrained(data, tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp('untrained'), data)


@pytest.fixture(scope='module')
def trained(data, tmp_path_factory) -> Path:
    "A training output directory of a tiny model trained on the repetitive corpus (a few hundred steps)."
    from minillm.training import TrainConfig, train
    out = tmp_path_factory.mktemp('trained')
    train(TrainConfig(data_dir=str(data), out_dir=str(out), epochs=60, batch_size=16, learning_rate=3e-3, model='tiny',
                      block_size=32, n_layer=2, n_embd=64, n_head=2, device='cpu', dtype='float32', warmup=20,
                      max_steps=300, eval_batches=2, checkpoint_every=100, progress=False))
    return out


# loading

def test_load_checkpoint_and_run_dir(untrained, trained):
    m, tok = load(untrained)
    assert m.config.vocab_size == tok.vocab_size and not m.training
    m2, _ = load(trained)                       # a run directory: checkpoints/best (or last)
    assert m2.config.n_embd == 64


@pytest.mark.parametrize('victim', ['model.safetensors', 'config.json', 'tokenizer.model'])
def test_incomplete_checkpoint_names_the_file(untrained, tmp_path, victim):
    d = tmp_path / 'ck'; d.mkdir()
    for f in untrained.iterdir(): (d / f.name).write_bytes(f.read_bytes())
    (d / victim).unlink()
    with pytest.raises(MinillmError) as e: load(d)
    assert e.value.exit_code == ExitCode.GENERATION and victim in str(e.value) and '\n' not in str(e.value)


@pytest.mark.parametrize('victim', ['model.safetensors', 'config.json', 'tokenizer.model'])
def test_corrupt_checkpoint_is_one_line(untrained, tmp_path, victim):
    d = tmp_path / 'ck'; d.mkdir()
    for f in untrained.iterdir(): (d / f.name).write_bytes(f.read_bytes())
    (d / victim).write_bytes((d / victim).read_bytes()[:20])
    with pytest.raises(MinillmError) as e: load(d)
    assert e.value.exit_code == ExitCode.GENERATION and '\n' not in str(e.value)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(MinillmError) as e: load(tmp_path / 'nope')
    assert e.value.exit_code == ExitCode.GENERATION and 'nope' in str(e.value)


# sampling

def test_topk_topp_never_leave_their_sets():
    logits = torch.log(torch.tensor([[0.4, 0.25, 0.15, 0.1, 0.06, 0.04]]))
    g = torch.Generator().manual_seed(0)
    k = torch.stack([pick_next(logits.expand(64, 6), 1.0, top_k=3, generator=g) for _ in range(50)])
    assert set(k.unique().tolist()) == {0, 1, 2}
    p = torch.stack([pick_next(logits.expand(64, 6), 1.0, top_p=0.75, generator=g) for _ in range(50)])
    assert set(p.unique().tolist()) == {0, 1, 2}              # 0.4 + 0.25 < 0.75 <= 0.4 + 0.25 + 0.15
    both = filter_logits(logits, top_k=2, top_p=0.9)
    assert torch.isfinite(both).tolist() == [[True, True, False, False, False, False]]


def test_same_seed_same_text(untrained):
    m, tok = load(untrained)
    a = generate(m, tok, 'the cat', 30, temperature=1.0, seed=7)
    b = generate(m, tok, 'the cat', 30, temperature=1.0, seed=7)
    c = generate(m, tok, 'the cat', 30, temperature=1.0, seed=8)
    assert a == b and a != c


def test_greedy_is_argmax_of_full_forward_and_cache_equals_no_cache(untrained):
    m, tok = load(untrained)
    prompt = torch.tensor([tok.encode('the dog ran')])
    greedy = lambda logits, ids: logits.argmax(-1)
    fast = torch.stack(list(next_tokens(m, prompt, greedy, 25)), 1)
    slow = torch.stack(list(next_tokens(m, prompt, greedy, 25, use_cache=False)), 1)
    assert torch.equal(fast, slow)
    seq = torch.cat([prompt, fast], 1)
    with torch.no_grad():
        for i in range(25): assert m(seq[:, :prompt.size(1) + i])[0][0, -1].argmax().item() == fast[0, i].item()


def test_slides_past_the_context(untrained):
    m, tok = load(untrained)                                   # block_size 32
    ids = []
    text = generate(m, tok, 'the cat', 100, temperature=1.0, seed=0, stop_at_eos=False)
    list(stream(m, tok, 'the cat', 100, temperature=1.0, seed=0, stop_at_eos=False, token_ids=ids))
    assert len(ids[0]) == 100                                 # 68 tokens past the 32-token context
    prompt = tok.encode('the cat')                             # the text is those ids, decoded after the prompt
    assert text == tok.decode(prompt + ids[0])[len(tok.decode(prompt)):]


def test_long_prompt_is_cut_with_a_warning(untrained):
    m, tok = load(untrained)
    with pytest.warns(UserWarning, match='longer than the context'):
        out = generate(m, tok, 'the cat sat on the mat ' * 20, 5, temperature=0, stop_at_eos=False)
    assert isinstance(out, str)


def test_batched_prompts_equal_single(untrained):
    m, tok = load(untrained)
    prompts = ['the cat', 'a little bird sang', 'the cat']
    batch = generate(m, tok, prompts, 15, temperature=0, stop_at_eos=False)
    assert batch == [generate(m, tok, p, 15, temperature=0, stop_at_eos=False) for p in prompts]


@pytest.mark.parametrize('kw', [dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=0)])
def test_bad_sampling_arguments(untrained, kw):
    m, tok = load(untrained)
    with pytest.raises(MinillmError) as e: generate(m, tok, 'x', 5, **kw)
    assert e.value.exit_code == ExitCode.USAGE


def test_streaming_pieces_join_to_the_decoded_text_with_byte_fallback(data):
    tok = Tokenizer.load(data)
    text = ' the cat — naïve café 😀 and 漢字 end'
    ids = tok.encode(text)
    ctx = tok.encode('hello')
    dec = StreamDecoder(tok, ctx)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert '\ufffd' not in ''.join(pieces)
    assert ''.join(pieces) == tok.decode(ctx + ids)[len(tok.decode(ctx)):]


def test_unseen_characters_in_prompt(untrained):
    m, tok = load(untrained)
    out = generate(m, tok, 'Ωμέγα 😀', 10, temperature=0)
    assert isinstance(out, str)


def test_stop_string(trained):
    m, tok = load(trained)
    full = generate(m, tok, 'The cat', 40, temperature=0, stop_at_eos=False)
    assert ' the' in full
    cut = generate(m, tok, 'The cat', 40, temperature=0, stop_at_eos=False, stop=' the')
    assert cut == full[:full.index(' the')]


# scoring and validation

def test_token_nll_scores_every_token_once(untrained):
    m, _ = load(untrained)
    ids = torch.randint(0, m.config.vocab_size, (150,))
    nll = token_nll(m, ids, stride=8)
    assert nll.shape == (149,)
    with torch.no_grad():                                       # the first window: plain causal scores
        ref = torch.nn.functional.cross_entropy(m(ids[None, :32])[0][0], ids[1:33], reduction='none')
    assert np.allclose(nll[:32], ref.numpy(), atol=1e-5)


def test_validate_fails_untrained_and_passes_trained(untrained, trained, tmp_path):
    bad = validate(untrained, report_path=tmp_path / 'bad.json')
    assert not bad['passed'] and 'bits_per_byte' in bad['failed'] and 'real_words' in bad['failed']
    assert json.loads((tmp_path / 'bad.json').read_text())['checks']['bits_per_byte']['threshold'] > 0
    with pytest.raises(MinillmError) as e: check_report(bad)
    assert e.value.exit_code == ExitCode.VALIDATION and 'bits_per_byte' in str(e.value)
    good = validate(trained)  # default thresholds: it beats the counting baselines by their margin
    assert good['passed'], good
    assert good['val_bpb'] <= ValidateConfig().max_bpb_ratio * min(good['baselines']['bigram'], good['baselines']['trigram'])
    c = good['checks']['distinct_bigrams']
    # both figures are rounded to 4 places from unrounded values: compare within that rounding, never exactly
    assert 0 < c['reference'] < 1 and c['threshold'] == pytest.approx(0.5 * c['reference'], abs=1e-4)


def test_validate_fails_a_degenerate_loop(trained, monkeypatch):
    import minillm.generation as g
    monkeypatch.setattr(g, 'generate', lambda model, tok, prompt, *a, **kw: 'the the the the the the the the the the')
    r = validate(trained)
    assert not r['passed'] and r['failed'] == ['distinct_bigrams'], r['checks']
    assert r['checks']['distinct_bigrams']['value'] == pytest.approx(1 / 54, abs=1e-4)  # one distinct pair among 6 x 9



class CountingModel(torch.nn.Module):
    "A Kneser-Ney trigram table dressed as a model: its logits are the table's log-probabilities."
    def __init__(self, counts, block_size: int = 32):
        super().__init__()
        self.counts, self.embed = counts, torch.nn.Embedding(1, 1)   # `embed` only says which device it is on
        self.config = ModelConfig(vocab_size=counts.V, block_size=block_size, n_layer=1, n_head=1, n_kv_head=1, n_embd=2)

    def forward(self, idx, targets=None, cache=None):
        logp = [[np.log(self.counts.next_distribution(row[:t + 1])) for t in range(len(row))] for row in idx.tolist()]
        return torch.tensor(np.array(logp), dtype=torch.float32), None


def test_validate_fails_a_trigram_table_dressed_as_a_model(trained, data, monkeypatch):
    "Counting cannot pass: a trigram table scores exactly the trigram baseline, above the required margin."
    import minillm.generation as g
    from minillm.ngram import KneserNey, sample_tokens
    from minillm.tokenizer import load_shard
    tok = Tokenizer.load(data)
    table = KneserNey(load_shard(data, 'train'), tok.vocab_size, 3)
    monkeypatch.setattr(g, 'load', lambda ck, device='cpu': (CountingModel(table), tok))
    # its samples are drawn from the table, as a model's would be: real words, locally fluent
    monkeypatch.setattr(g, 'generate', lambda m, t, prompt, n, seed=0, **kw: t.decode(
        sample_tokens(table, t.encode(prompt) or [t.eos_id], n, seed=seed)))
    r = validate(trained)
    assert r['failed'] == ['bits_per_byte'], r['checks']
    assert r['val_bpb'] == pytest.approx(r['baselines']['trigram'], rel=0.02)   # it is the trigram, scored as a model
    code, out, err = run_cli(['validate', '--checkpoint', str(trained)])
    assert code == ExitCode.VALIDATION and 'validation failed: bits_per_byte' in err


def test_validate_fails_a_briefly_trained_model(data, tmp_path):
    "Forty steps of training: it has learned something, not enough to beat counting."
    from minillm.training import TrainConfig, train
    train(TrainConfig(data_dir=str(data), out_dir=str(tmp_path), batch_size=16, learning_rate=3e-3, model='tiny',
                      block_size=32, n_layer=2, n_embd=64, n_head=2, device='cpu', dtype='float32', warmup=20,
                      max_steps=40, eval_batches=2, progress=False))
    r = validate(tmp_path)
    assert not r['passed'] and 'bits_per_byte' in r['failed'] and r['val_bpb'] > r['baselines']['trigram'], r['checks']
    code, out, err = run_cli(['validate', '--checkpoint', str(tmp_path)])
    assert code == ExitCode.VALIDATION and 'bits_per_byte' in err

def test_reference_bigrams_cuts_real_text_like_the_samples():
    from minillm.generation import reference_bigrams, distinct_bigrams
    text = ' '.join(['the cat sat on the mat'] * 20)                   # 120 words, a pair repeats every 6 words
    assert reference_bigrams(text, [6, 6]) == distinct_bigrams(['the cat sat on the mat'] * 2) == 0.5
    assert reference_bigrams(text, [3]) == 1.0                          # 3-word chunks repeat no pair inside a chunk


def test_evaluate(trained, untrained, tmp_path):
    f = tmp_path / 't.txt'; f.write_text(' '.join(s.capitalize() for s in SENTENCES * 20))
    good, bad = evaluate(trained, f), evaluate(untrained, f)
    assert good['bits_per_byte'] < bad['bits_per_byte'] and good['perplexity'] < bad['perplexity']
    assert good['tokens'] > 64 and good['bits_per_char'] >= good['bits_per_byte']


# the commands

def test_cli_generate_streams_and_json(trained):
    code, out, _ = run_cli(['generate', '--checkpoint', str(trained), '--prompt', 'The dog', '--max-new-tokens', '20', '--seed', '1'])
    assert code == 0 and len(out.strip()) > 0
    code, out, _ = run_cli(['generate', '--checkpoint', str(trained), '--prompt', 'The dog', '--max-new-tokens', '20',
                            '--temperature', '0', '--json'])
    r = json.loads(out)
    assert code == 0 and r['tokens'] == len(r['token_ids']) and r['tokens_per_s'] > 0


def test_cli_generate_compile_reaches_the_decode_step(trained, monkeypatch):
    "--compile asks next_tokens for the compiled step (off by default); the greedy text is the same either way."
    import minillm.generation as g
    seen, real = [], g.decode_steps
    monkeypatch.setattr(g, 'decode_steps', lambda m, c, compile=False: seen.append(compile) or real(m, c))
    args = ['generate', '--checkpoint', str(trained), '--prompt', 'The dog', '--max-new-tokens', '12',
            '--temperature', '0', '--json']
    outs = [json.loads(run_cli(args + extra)[1])['token_ids'] for extra in ([], ['--compile'])]
    assert seen == [False, True] and outs[0] == outs[1]


def test_cli_interactive(trained):
    p = subprocess.run([sys.executable, '-m', 'minillm', 'generate', '--checkpoint', str(trained), '--interactive',
                        '--max-new-tokens', '5', '--temperature', '0'], input='The cat\nThe dog\n\n', capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and len(p.stdout.strip().splitlines()) == 2


@pytest.mark.parametrize('args,code,words', [
    (['--temperature', '-1'], ExitCode.USAGE, '--temperature'), (['--top-p', '0'], ExitCode.USAGE, '--top-p'),
    (['--top-k', '0'], ExitCode.USAGE, '--top-k')])
def test_cli_bad_args(untrained, args, code, words):
    c, _, err = run_cli(['generate', '--checkpoint', str(untrained), '--prompt', 'x', *args])
    assert c == code and words in err and len(err.strip().splitlines()) == 1


def test_cli_missing_checkpoint(tmp_path):
    c, _, err = run_cli(['generate', '--checkpoint', str(tmp_path / 'none'), '--prompt', 'x'])
    assert c == ExitCode.GENERATION and 'none' in err and len(err.strip().splitlines()) == 1


def test_cli_validate_exit_codes(untrained, trained, tmp_path):
    c, out, err = run_cli(['validate', '--checkpoint', str(untrained), '--report', str(tmp_path / 'r.json')])
    assert c == ExitCode.VALIDATION and 'bits_per_byte' in err and (tmp_path / 'r.json').exists()
    c, out, err = run_cli(['validate', '--checkpoint', str(trained), '--min-distinct-bigrams', '0.1'])
    assert c == 0, err


def test_cli_evaluate(trained, tmp_path):
    f = tmp_path / 't.txt'; f.write_text('The cat sat on the mat. ' * 30)
    c, out, _ = run_cli(['evaluate', '--checkpoint', str(trained), '--text', str(f), '--json'])
    assert c == 0 and json.loads(out)['bits_per_byte'] > 0
    f.write_bytes(b'\xff\xfe\x00bad')
    c, _, err = run_cli(['evaluate', '--checkpoint', str(trained), '--text', str(f)])
    assert c == ExitCode.USAGE and 'UTF-8' in err


@pytest.mark.slow
@pytest.mark.skipif(not (__import__('shutil').which('g++') or __import__('shutil').which('c++')),
                    reason='torch.compile on the CPU needs a C++ compiler')
def test_compiled_decode_step_gives_the_same_greedy_tokens(tmp_path, monkeypatch):
    "Eager cache, compiled step and no cache: identical greedy tokens past a slide of the window, batch 2 and 1."
    from minillm.generation import decode_steps
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path))
    torch.manual_seed(7)
    m = MiniLLM(ModelConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_kv_head=1, n_embd=32)).eval()
    prompt = torch.randint(0, 64, (2, 5))
    greedy = lambda logits, ids: logits.argmax(-1)
    run = lambda p, **kw: torch.stack(list(next_tokens(m, p, greedy, 70, **kw)), 1)  # 70 > 32: slides twice
    eager = run(prompt)
    assert torch.equal(run(prompt, compile=True), eager)
    assert torch.equal(run(prompt, use_cache=False), eager)
    assert torch.equal(run(prompt[:1], compile=True), run(prompt[:1]))   # another batch size: a second graph
    with torch.inference_mode():                                          # and the logits themselves
        caches = [m.make_cache(2) for _ in range(2)]
        for c in caches: m(prompt, cache=c)
        a, b = decode_steps(m, caches[0])(prompt[:, -1:]), decode_steps(m, caches[1], compile=True)(prompt[:, -1:])
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
