"Tests of `minillm bench`: JSON structure, consistent figures, argument errors (tiny shapes, no shared data)."
import json, math, subprocess, sys
from pathlib import Path

import pytest

from minillm.core import main
from minillm import bench

TEXT = ('First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n'
        'Second Citizen:\nWould you proceed especially against Caius Marcius?\n\n') * 150
TINY = '{"vocab_size": 300, "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "batch_size": 4}'


def _stats_ok(d):
    assert set(d) >= {'median', 'min', 'max', 'runs'}
    assert 0 < d['min'] <= d['median'] <= d['max']


@pytest.fixture(scope='module')
def quality(tmp_path_factory):
    d = tmp_path_factory.mktemp('q')
    (d / 'all.txt').write_text(TEXT + 'Ünïcödé — “quotes” ☃\n' * 5, encoding='utf-8')
    code = main(['bench', 'quality', '--text', str(d / 'all.txt'), '--split', '0.9', '--budget', '3s',
                 '--recipe', TINY, '--threads', '1', '--out', str(d / 'run'), '--json', str(d / 'q.json'), '--quiet'])
    assert code == 0
    return d, json.loads((d / 'q.json').read_text())


def untrained_bits(q: dict, val: str) -> float:
    "Bits per character of `val` under an untrained model of the shape and tokenizer of quality run `q` (7.58 here)."
    import torch
    from minillm.checkpoint import load
    from minillm.model import MiniLLM
    model, tok = load(q['checkpoint'])
    torch.manual_seed(0)
    return bench.text_bits(MiniLLM(model.config).eval(), tok, val)['bits_per_char']


def test_quality_json(quality):
    d, q = quality
    text = (d / 'all.txt').read_text(encoding='utf-8'); val = text[int(len(text) * 0.9):]
    assert q['chars'] == len(val) and q['bytes'] == len(val.encode('utf-8')) > q['chars']  # non-ASCII in the tail
    assert q['bits_per_char'] > 0 and q['bits_per_byte'] > 0
    # bits of the same text: per byte = per char * chars / bytes
    assert math.isclose(q['bits_per_byte'], q['bits_per_char'] * q['chars'] / q['bytes'], rel_tol=1e-9)
    assert q['bits_per_char'] < 0.8 * untrained_bits(q, val)  # it learned: an untrained model of its shape fails this
    assert q['training']['steps'] > 0 and q['tokenizer_s'] > 0
    assert q['tokenizer_s'] + q['training']['seconds'] <= q['budget_s'] + 15  # the tokenizer counts in the budget
    assert q['training']['wall_s'] >= q['training']['seconds']  # with setup
    assert q['recipe']['vocab_size'] == 300 and set(q['machine']) >= {'cpu', 'cores', 'torch', 'torch_threads', 'date'}


def test_quality_trains_with_train(quality):
    "The run is chapter 5's `train`: its summary, metrics, a schedule ending annealed."
    d, q = quality
    t = q['training']
    run = Path(q['checkpoint']).parents[1]        # OUT/train, above checkpoints/last
    assert run == d / 'run' / 'train'
    summary = json.loads((run / 'summary.json').read_text())
    assert {k: t[k] for k in summary} == summary  # train's summary, times added
    assert t['status'] == 'complete' and t['steps'] == t['total_steps']
    lines = (run / 'metrics.jsonl').read_text().splitlines()
    metrics = [json.loads(line) for line in lines]
    peak = q['recipe']['learning_rate']
    assert metrics[-1]['step'] == t['steps']
    assert metrics[-1]['lr'] < 0.01 * peak                  # annealed at the end
    assert t['total_steps'] > q['recipe']['warmup']           # past the warmup: the rate peaked, then decayed
    options = json.loads((Path(q['checkpoint']) / 'train_config.json').read_text())
    assert options['n_embd'] == 32 and options['batch_size'] == 4
    left = q['budget_s'] - q['tokenizer_s']      # the budget, less the tokenizer's time
    assert float(options['max_time'].removesuffix('s')) == pytest.approx(left, abs=0.02)


def test_quality_checkpoint_reloads(quality):
    "The checkpoint holds a model and tokenizer that `load` reads; they give the score."
    from minillm.checkpoint import load
    d, q = quality
    ck = Path(q['checkpoint'])
    assert {'model.safetensors', 'config.json', 'tokenizer.model'} <= {p.name for p in ck.iterdir()}
    text = (d / 'all.txt').read_text(encoding='utf-8'); val = text[int(len(text) * 0.9):]
    again = bench.text_bits(*load(ck), val)
    assert math.isclose(again['bits_per_char'], q['bits_per_char'], rel_tol=1e-5)


def test_text_bits_counts_every_token(quality):
    "Chapter 6's windows score each token once: uniform logits give n * ln(V) nats."
    import torch
    from minillm.checkpoint import load
    from minillm.model import ModelConfig, MiniLLM
    _, tok = load(quality[1]['checkpoint'])
    V = tok.vocab_size
    m = MiniLLM(ModelConfig(vocab_size=V, block_size=8, n_layer=1, n_head=2,
                            n_kv_head=2, n_embd=16)).eval()
    with torch.no_grad():
        for p in m.parameters(): p.zero_()   # every logit 0: each token costs ln(V)
    texts = ('S', 'Speak.', 'All:\nSpeak, speak.\n', TEXT[:200], TEXT[:1000] + '☃ “q”')
    for text in texts:
        b = bench.text_bits(m, tok, text)
        assert b['tokens'] == len(tok.encode_array(text)) and b['chars'] == len(text)
        assert math.isclose(b['nats'], b['tokens'] * math.log(V), rel_tol=1e-5), text
        bpc = b['tokens'] * math.log2(V) / len(text)
        assert math.isclose(b['bits_per_char'], bpc, rel_tol=1e-5)


def test_speed_json(tmp_path, monkeypatch):
    res = bench.bench_speed(bench.ModelConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_kv_head=2, n_embd=32),
                            batch_size=2, repeats=1, matmul_n=64, steps=1, n_new=8, text=TEXT,
                            default=bench.ModelConfig(vocab_size=300, block_size=16, n_layer=1, n_head=2, n_kv_head=2, n_embd=32),
                            log=lambda m: None)
    json.dumps(res)
    for dt in ('float32', 'bfloat16'): _stats_ok(res['peak'][dt])
    assert {(t['model'], t['dtype']) for t in res['training']} == {(m, d) for m in ('default', 'given') for d in ('float32', 'bfloat16')}
    for t in res['training']:
        _stats_ok(t['tokens_per_s']); assert t['mfu'] > 0 and t['flops_per_token'] > 0
    g = res['generation']; _stats_ok(g['cache']); _stats_ok(g['no_cache'])
    assert g['speedup'] == pytest.approx(g['cache']['median'] / g['no_cache']['median'])
    tk = res['tokenizer']; _stats_ok(tk['encode_mb_per_s']); _stats_ok(tk['train_seconds']); assert tk['tokens'] > 0
    assert res['machine']['cores'] >= 1


def test_speed_cli_writes_json(tmp_path):
    (tmp_path / 't.txt').write_text(TEXT)
    run = tmp_path / 'run'; run.mkdir()
    (run / 'summary.json').write_text(json.dumps({'phase_seconds': {'corpus': 1.5, 'train': 2.5}}))
    args = ['bench', 'speed', '--n-layer', '1', '--n-head', '2', '--n-embd', '32', '--block-size', '16', '--batch-size', '2',
            '--repeats', '1', '--matmul-n', '64', '--n-new', '8', '--text', str(tmp_path / 't.txt'),
            '--run-dir', str(run), '--preset', 'tiny', '--tokenizer-vocab', '300', '--threads', '1', '--json', str(tmp_path / 's.json')]
    assert main(args) == 0
    s = json.loads((tmp_path / 's.json').read_text())
    assert s['pipeline']['total_s'] == 4.0
    given = [t for t in s['training'] if t['model'] == 'given'][0]
    assert given['shape']['n_embd'] == 32 and given['batch_size'] == 2 and given['shape']['vocab_size'] == 65


@pytest.mark.parametrize('args,msg', [
    (['quality', '--text', 'missing.txt'], 'not found'),
    (['quality'], 'give --train-text'),
    (['quality', '--text', '{f}', '--train-text', '{f}', '--val-text', '{f}'], 'not both'),
    (['quality', '--text', '{f}', '--split', '1.5'], '--split'),
    (['quality', '--text', '{f}', '--budget', 'soon'], 'bad duration'),
    (['quality', '--text', '{f}', '--budget', '0s'], 'positive'),
    (['quality', '--text', '{f}', '--recipe', '{{"vocab": 512}}'], 'bad --recipe'),
    (['quality', '--text', '{f}', '--budget', '0.05s', '--recipe',
      '{{"vocab_size": 300}}', '--out', '{d}'], 'leaving no time to train'),
    (['speed', '--n-embd', '130', '--n-head', '4'], 'bad shape'),
    (['speed', '--repeats', '0'], '--repeats'),
    (['speed', '--preset', 'huge'], 'unknown --preset'),
    (['speed', '--run-dir', '{d}', '--repeats', '1', '--matmul-n', '8'], None),
])
def test_argument_errors_exit_1(tmp_path, capsys, args, msg):
    f = tmp_path / 'x.txt'; f.write_text(TEXT)
    args = [a.format(f=f, d=tmp_path / 'nowhere') for a in args]
    if msg is None:  # a missing pipeline run is checked only after the measurements: use a cheap stand-in
        with pytest.raises(bench.MinillmError, match='summary.json'): bench.read_pipeline_times(tmp_path / 'nowhere')
        return
    assert main(['bench', *args]) == 1
    err = capsys.readouterr().err
    assert msg in err and err.count('\n') <= 2


def test_unknown_subcommand_exits_1():
    r = subprocess.run([sys.executable, '-m', 'minillm', 'bench', 'fast'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and 'invalid choice' in r.stderr
    r = subprocess.run([sys.executable, '-m', 'minillm', 'bench'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
