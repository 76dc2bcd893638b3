"Tests of minillm.model: causality, initial loss, overfitting, dtypes, the KV cache, the formulas."
import json, math

import pytest
import torch
import torch.nn.functional as F

from minillm.model import MODEL_PRESETS, KVCache, MiniLLM, ModelConfig, count_params, flops_per_token


def tiny(**kw):
    d = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    d.update(kw)
    return ModelConfig(**d)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MiniLLM(tiny()).eval()


def test_presets_follow_the_contract():
    assert {'nano', 'default'} <= set(MODEL_PRESETS)
    nano = MODEL_PRESETS['nano']
    assert (nano['n_layer'], nano['n_head'], nano['n_embd']) == (4, 4, 128)
    for name, shape in MODEL_PRESETS.items():
        cfg = ModelConfig(vocab_size=4096, **shape)
        assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg, name


def test_config_rejects_bad_shapes():
    with pytest.raises(ValueError): ModelConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError): ModelConfig(n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match='n_layers'): ModelConfig.from_dict({'n_layers': 2})


@pytest.mark.parametrize('n_kv_head', [4, 2, 1])
def test_causality(n_kv_head):
    torch.manual_seed(1)
    m = MiniLLM(tiny(n_kv_head=n_kv_head)).eval()
    idx = torch.randint(0, 97, (2, 32))
    with torch.no_grad():
        base, _ = m(idx)
        for t in (0, 7, 30):
            changed = idx.clone()
            changed[:, t + 1] = (changed[:, t + 1] + 1) % 97
            out, _ = m(changed)
            torch.testing.assert_close(out[:, :t + 1], base[:, :t + 1])
            assert not torch.allclose(out[:, t + 1], base[:, t + 1])  # the change is seen where it should be


@pytest.mark.parametrize('vocab', [97, 4096])
def test_initial_loss_is_about_log_vocab(vocab):
    torch.manual_seed(2)
    cfg = ModelConfig(vocab_size=vocab, **MODEL_PRESETS['nano'])
    m = MiniLLM(cfg)
    idx, targets = torch.randint(0, vocab, (4, 64)), torch.randint(0, vocab, (4, 64))
    with torch.no_grad(): _, loss = m(idx, targets)
    assert abs(loss.item() - math.log(vocab)) < 0.1 * math.log(vocab)


def test_overfits_one_batch():
    torch.manual_seed(3)
    m = MiniLLM(tiny(n_layer=2, n_embd=64, n_kv_head=4))
    idx = torch.randint(0, 97, (4, 17))
    x, y = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for step in range(300):
        _, loss = m(x, y)
        if loss.item() < 0.05: break
        opt.zero_grad(); loss.backward(); opt.step()
    assert loss.item() < 0.05, loss.item()


def test_ignore_index_and_loss_matches_cross_entropy(model):
    idx, y = torch.randint(0, 97, (2, 8)), torch.randint(0, 97, (2, 8))
    y[:, :3] = -1
    logits, loss = model(idx, y)
    assert logits is None  # the training path never builds the full logits
    logits, nothing = model(idx)
    assert nothing is None
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 97), y.reshape(-1), ignore_index=-1))
    # more positions than one slice of head_loss, with every target ignored in some slices
    m = MiniLLM(tiny(block_size=300)).eval()
    idx, y = torch.randint(0, 97, (2, 300)), torch.randint(0, 97, (2, 300))
    y[0, :280] = -1
    logits, _ = m(idx)
    torch.testing.assert_close(m(idx, y)[1], F.cross_entropy(logits.reshape(-1, 97), y.reshape(-1), ignore_index=-1))


def test_shapes_and_dtypes(model):
    idx, y = torch.randint(0, 97, (3, 16)), torch.randint(0, 97, (3, 16))
    logits, loss = model(idx)[0], model(idx, y)[1]
    assert logits.shape == (3, 16, 97) and logits.dtype == torch.float32 and loss.dtype == torch.float32
    model.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits, loss = model(idx)[0], model(idx, y)[1]
    assert logits.shape == (3, 16, 97) and logits.dtype == torch.bfloat16
    assert loss.dtype == torch.float32 and loss.ndim == 0
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    # the cache works under bfloat16 weights too
    m16 = MiniLLM(tiny()).to(torch.bfloat16).eval()
    cache = m16.make_cache(3)
    assert isinstance(cache, KVCache) and cache.k[0].dtype == torch.bfloat16
    with torch.no_grad(): assert m16(idx, cache=cache)[0].dtype == torch.bfloat16
    assert cache.pos == 16


@pytest.mark.parametrize('n_kv_head', [4, 1])
def test_kv_cache_equals_full_recompute(n_kv_head):
    torch.manual_seed(4)
    m = MiniLLM(tiny(n_kv_head=n_kv_head)).eval()
    idx = torch.randint(0, 97, (2, 32))
    with torch.no_grad():
        full, _ = m(idx)
        # prefill then one token at a time
        cache = m.make_cache(2)
        steps = [m(idx[:, :5], cache=cache)[0]] + [m(idx[:, t:t + 1], cache=cache)[0] for t in range(5, 32)]
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
        assert cache.pos == 32
        # chunks of uneven sizes
        cache = m.make_cache(2)
        chunks = [m(idx[:, a:b], cache=cache)[0] for a, b in [(0, 1), (1, 8), (8, 11), (11, 12), (12, 32)]]
        torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-5, rtol=1e-4)
        with pytest.raises(ValueError, match='block_size'): m(idx[:, :1], cache=cache)


@pytest.mark.parametrize('kw', [{}, dict(n_kv_head=1), dict(tie_embeddings=False)])
def test_param_count_formula(kw):
    for shape in [dict(tiny(**kw).to_dict()), dict(MODEL_PRESETS['default'], vocab_size=4096, **kw)]:
        cfg = ModelConfig(**shape)
        assert count_params(cfg) == sum(p.numel() for p in MiniLLM(cfg).parameters())


@pytest.mark.parametrize('kw', [{}, dict(n_kv_head=1), dict(tie_embeddings=False)])
def test_flops_formula_matches_flop_counter(kw):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    cfg = tiny(**kw)
    m = MiniLLM(cfg)
    B, T = 2, cfg.block_size
    idx = torch.randint(0, 97, (B, T))
    # the math backend spells attention out as matmuls, which the counter sees (the fused CPU kernel it does not)
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        _, loss = m(idx, idx)
        loss.backward()
    assert counter.get_total_flops() == flops_per_token(cfg) * B * T
    with FlopCounterMode(display=False) as fwd, torch.no_grad(), sdpa_kernel(SDPBackend.MATH): m(idx)
    assert fwd.get_total_flops() == flops_per_token(cfg, training=False) * B * T


def test_head_loss_in_slices_equals_one_call():
    "Slices of logits (a big vocabulary) and one call (a small one) give the same mean, -1 ignored."
    from minillm.model import head_loss
    torch.manual_seed(5)
    x, head, y = torch.randn(700, 16), torch.randn(97, 16), torch.randint(0, 97, (700,))
    y[:300] = -1                                            # the first slices hold no target at all
    want = F.cross_entropy(x @ head.T, y, ignore_index=-1)
    torch.testing.assert_close(head_loss(x, head, y), want)                    # one slice
    torch.testing.assert_close(head_loss(x, head, y, max_logits=97 * 64), want)  # 64 rows a slice


def test_static_cache_writes_in_place_and_masks_empty_slots(model):
    "The cache's buffers never change shape or identity; a step reads only the slots written so far."
    cache = model.make_cache(2)
    buffers = [t.data_ptr() for t in cache.k + cache.v]
    assert all(t.shape == (2, 2, 32, 8) for t in cache.k + cache.v)
    idx = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        model(idx[:, :6], cache=cache)
        assert cache.mask.shape == (6, 32) and cache.mask[5].sum() == 6 and int(cache.pos) == 6
        model(idx[:, 6:7], cache=cache)
        assert cache.at.tolist() == [6] and cache.mask.sum() == 7
    assert [t.data_ptr() for t in cache.k + cache.v] == buffers
    assert cache.k[0][:, :, 7:].abs().sum() == 0           # nothing written past the last position


needs_compiler = pytest.mark.skipif(not (__import__('shutil').which('g++') or __import__('shutil').which('c++')),
                                    reason='torch.compile on the CPU needs a C++ compiler')


@pytest.mark.slow
@needs_compiler
def test_compiled_model_matches_eager(tmp_path, monkeypatch):
    "The compiled training step is the same model: loss within 1e-5, every gradient within 1e-4 (float32)."
    from minillm.model import compiled
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path))   # not the user's cache
    torch.manual_seed(6)
    m = MiniLLM(tiny(n_layer=1, n_kv_head=2))
    idx, y = torch.randint(0, 97, (3, 32)), torch.randint(0, 97, (3, 32))
    y[0, :5] = -1
    grads = []
    for net in (m, compiled(m)):
        m.zero_grad(set_to_none=True)
        loss = net(idx, y)[1]; loss.backward()
        grads.append((loss.detach(), {k: p.grad.clone() for k, p in m.named_parameters()}))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-5, rtol=1e-5)
    for k in grads[0][1]: torch.testing.assert_close(grads[1][1][k], grads[0][1][k], atol=1e-4, rtol=1e-4, msg=k)
