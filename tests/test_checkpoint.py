"Tests of minillm.checkpoint: saving and loading a model without pickle, and its errors (the rest is tested where it is used)."
import json

import pytest
import torch

from minillm.core import ExitCode, MinillmError
from minillm.model import MiniLLM, ModelConfig
from minillm.checkpoint import load_model, save_model


def tiny(**kw):
    d = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    d.update(kw)
    return ModelConfig(**d)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MiniLLM(tiny()).eval()


def test_save_load_round_trip_without_pickle(model, tmp_path, monkeypatch):
    save_model(model, tmp_path / 'ckpt')
    assert sorted(p.name for p in (tmp_path / 'ckpt').iterdir()) == ['config.json', 'model.safetensors']
    assert json.loads((tmp_path / 'ckpt' / 'config.json').read_text()) == model.config.to_dict()
    import pickle
    def no_pickle(*a, **k): raise AssertionError('load_model must not unpickle')
    monkeypatch.setattr(pickle, 'load', no_pickle)
    monkeypatch.setattr(pickle, 'loads', no_pickle)
    monkeypatch.setattr(torch, 'load', no_pickle)
    loaded = load_model(tmp_path / 'ckpt')
    assert loaded.config == model.config and not loaded.training
    idx = torch.randint(0, 97, (2, 10))
    with torch.no_grad(): torch.testing.assert_close(loaded(idx)[0], model(idx)[0], rtol=0, atol=0)
    # untied heads round-trip too
    untied = MiniLLM(tiny(tie_embeddings=False))
    save_model(untied, tmp_path / 'untied')
    assert load_model(tmp_path / 'untied').lm_head is not None


def test_load_errors(model, tmp_path):
    with pytest.raises(MinillmError, match='not found') as e: load_model(tmp_path)
    assert e.value.exit_code == ExitCode.GENERATION
    save_model(model, tmp_path)
    (tmp_path / 'model.safetensors').write_bytes(b'not a safetensors file')
    with pytest.raises(MinillmError) as e: load_model(tmp_path)
    assert e.value.exit_code == ExitCode.GENERATION and '\n' not in str(e.value)
    save_model(model, tmp_path)
    cfg = model.config.to_dict(); cfg['n_embd'] = 64; cfg['n_head'] = 4
    (tmp_path / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(MinillmError, match='re-save'): load_model(tmp_path)


@pytest.mark.parametrize('change, message', [
    (dict(vocab_size=10**12), 'more than half of this machine'),          # terabytes of embeddings
    (dict(block_size=10**13), 'more than half of this machine'),          # rotary tables of a huge context
    (dict(n_head=0), 'config.json is not a model configuration'),         # would divide by zero
])
def test_absurd_config_is_refused_before_anything_is_built(model, tmp_path, change, message, monkeypatch):
    save_model(model, tmp_path)
    (tmp_path / 'config.json').write_text(json.dumps(dict(model.config.to_dict(), **change)))
    monkeypatch.setattr(MiniLLM, '__init__', lambda *a, **k: pytest.fail('a model was built'))
    with pytest.raises(MinillmError, match=message) as e: load_model(tmp_path)
    assert e.value.exit_code == ExitCode.GENERATION and '\n' not in str(e.value)
