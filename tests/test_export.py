"""Export: a trained minillm model in transformers (same logits, greedy tokens and token ids), in GGUF (names,
shapes, types, metadata; llama.cpp itself where llama-cpp-python is installed), back through import-hf, with
grouped-query attention and an untied head; the checkpoint is never changed and nothing is overwritten
without --force."""
import hashlib, json, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import report

from minillm.core import main, ExitCode, MinillmError
from minillm.testing import run_cli
from minillm.corpus import build_corpus, iter_documents
from minillm.model import MiniLLM, ModelConfig
from minillm.checkpoint import save_model
from minillm.tokenizer import Tokenizer, train_tokenizer, encode_shards
from minillm.training import TrainConfig, train
from minillm.checkpoint import load
from minillm.generation import next_tokens
from minillm.export import (export_hf, export_gguf, import_hf, hf_state_dict, rope_permute, gguf_name,
                            gguf_vocab, spm_model_type)

TRICKY = ['', 'Hello world', ' leading space', '  two leading spaces', 'double  space', 'trailing space ',
          'line\nbreaks\n\n', '\nstarts with a newline', '\ttab\tseparated', 'naïve café, Ærøskøbing',
          'Unicode: 東京 北京 ソウル', 'emoji 🙂🚀👩‍👩‍👧', 'rare ☃ 𝔘 ǅ', 'nbsp\u00a0zero\u200bwidth',
          'control \x00\x07 chars', 'mixed\r\nline ends', '"Quotes," she said -- and left.']

FIGURES = {}  # measured numbers, printed in the summary at the end of the session


@pytest.fixture(scope='module', autouse=True)
def report_figures(pytestconfig):
    "The figures this module measured go to the end-of-session summary (a record, not a check)."
    yield
    report(pytestconfig, 'export figures').append(json.dumps(FIGURES))


def sha_tree(d: Path) -> dict:
    "sha256 of every file under `d` (the whole checkpoint, not only its weights)."
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    "Token shards of the bundled corpus with a 1,024-piece tokenizer."
    root = tmp_path_factory.mktemp('export')
    build_corpus(root / 'corpus', progress=False)
    encode_shards(root / 'corpus', train_tokenizer(root / 'corpus', root / 'data', vocab_size=1024), root / 'data', progress=False)
    return root / 'data'


@pytest.fixture(scope='module')
def trained(data) -> Path:
    "A tiny model trained for 40 steps on the bundled corpus: its checkpoints/last."
    out = data.parent / 'train'
    t0 = time.perf_counter()
    train(TrainConfig(data_dir=str(data), out_dir=str(out), model='tiny', batch_size=16, learning_rate=3e-3, warmup=5,
                      max_steps=40, eval_batches=2, dtype='float32', progress=False))
    FIGURES['train_s'] = round(time.perf_counter() - t0, 1)
    return out / 'checkpoints' / 'last'


@pytest.fixture(scope='module')
def val_text(data) -> str:
    return list(iter_documents(data.parent / 'corpus', 'val'))[0][:20_000]


@pytest.fixture(scope='module')
def hf_dir(trained) -> Path:
    before = sha_tree(trained)
    t0 = time.perf_counter()
    out = export_hf(trained, trained.parent.parent / 'hf')
    FIGURES['export_hf_s'] = round(time.perf_counter() - t0, 3)
    assert sha_tree(trained) == before
    return out


@pytest.fixture(scope='module')
def hf(hf_dir):
    "The exported folder loaded by transformers: (model, tokenizer)."
    import transformers  # a development requirement: its absence fails, never skips
    transformers.logging.disable_progress_bar()
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    FIGURES['transformers_load_s'] = round(time.perf_counter() - t0, 2)
    return model, tok


@pytest.fixture(scope='module')
def gguf_files(trained) -> dict:
    out = {}
    for dtype in ('float32', 'float16'):
        t0 = time.perf_counter()
        out[dtype] = export_gguf(trained, trained.parent.parent / f'model-{dtype}.gguf', dtype=dtype)
        FIGURES[f'export_gguf_{dtype}_s'] = round(time.perf_counter() - t0, 3)
        FIGURES[f'gguf_{dtype}_bytes'] = out[dtype].stat().st_size
    return out


def windows(tok: Tokenizer, text: str, n: int, length: int) -> torch.Tensor:
    "n windows of `length` token ids of real text, one after the other."
    ids = tok.encode(text)
    assert len(ids) >= n * length
    return torch.tensor(ids[:n * length]).view(n, length)


# ---------------------------------------------------------------------------------------------- transformers

def test_logits_match_transformers(trained, hf, val_text):
    model, tok = load(trained)
    batch = windows(tok, val_text, 8, model.config.block_size)               # (8, 64) tokens of validation text
    with torch.no_grad():
        diff = (model(batch)[0] - hf[0](batch).logits).abs().max().item()
    FIGURES['max_logit_diff_hf'] = diff
    assert diff < 1e-4


def test_greedy_generation_identical(trained, hf, val_text):
    model, tok = load(trained)
    prompt = torch.tensor([tok.encode(val_text[:200])[:12]])                 # 12 + 50 tokens fit the 64-token context
    mine = torch.cat(list(next_tokens(model, prompt, lambda logits, ids: logits.argmax(-1), 50))).tolist()
    theirs = hf[0].generate(prompt, max_new_tokens=50, do_sample=False, pad_token_id=tok.pad_id)[0, prompt.size(1):]
    # both stop at </s> (minillm's generate does by default; transformers reads generation_config.json)
    assert theirs.tolist() == (mine[:mine.index(tok.eos_id) + 1] if tok.eos_id in mine else mine)
    FIGURES['greedy_tokens_compared'] = len(theirs)


@pytest.mark.parametrize('text', TRICKY)
def test_tokenizer_ids_identical(trained, hf, text):
    _, tok = load(trained)
    ids = tok.encode(text)
    assert hf[1].encode(text) == ids
    assert hf[1].decode(ids) == tok.decode(ids) == text


def test_tokenizer_identical_on_real_text(trained, hf, val_text):
    _, tok = load(trained)
    assert hf[1].encode(val_text) == tok.encode(val_text)
    assert hf[1](val_text).input_ids[0] != tok.bos_id  # no <s> in front, as minillm does


def test_hf_folder_contents(hf_dir, trained):
    from safetensors import safe_open
    assert sorted(p.name for p in hf_dir.iterdir()) == ['config.json', 'generation_config.json', 'model.safetensors',
                                                        'special_tokens_map.json', 'tokenizer.model', 'tokenizer_config.json']
    cfg = json.loads((hf_dir / 'config.json').read_text())
    assert cfg['architectures'] == ['LlamaForCausalLM'] and cfg['tie_word_embeddings'] is True
    with safe_open(str(hf_dir / 'model.safetensors'), 'pt') as f:
        assert 'lm_head.weight' not in f.keys() and 'model.layers.1.mlp.up_proj.weight' in f.keys()
    tc = json.loads((hf_dir / 'tokenizer_config.json').read_text())
    assert tc['add_bos_token'] is False and tc['add_prefix_space'] is False
    assert json.loads((hf_dir / 'generation_config.json').read_text()) == dict(bos_token_id=1, eos_token_id=2, pad_token_id=3)
    assert (hf_dir / 'tokenizer.model').read_bytes() == (trained / 'tokenizer.model').read_bytes()


def test_float16_hf_export(trained, tmp_path):
    from safetensors import safe_open
    out = export_hf(trained, tmp_path / 'f16', dtype='float16')
    assert json.loads((out / 'config.json').read_text())['dtype'] == 'float16'
    with safe_open(str(out / 'model.safetensors'), 'pt') as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}


# ---------------------------------------------------------------------------------------------- GGUF

def test_gguf_tensors_and_metadata(trained, gguf_files):
    import gguf  # a runtime requirement
    model, tok = load(trained)
    c, hf_weights = model.config, hf_state_dict(model)
    for dtype, path in gguf_files.items():
        r = gguf.GGUFReader(path)
        tensors = {t.name: t for t in r.tensors}
        assert sorted(tensors) == sorted(gguf_name(n) for n in hf_weights)
        assert 'output.weight' not in tensors  # tied: llama.cpp reuses token_embd.weight
        for name, w in hf_weights.items():
            t = tensors[gguf_name(name)]
            assert list(t.shape) == list(reversed(w.shape))  # GGUF lists dimensions innermost first
            want = 'F16' if dtype == 'float16' and w.ndim > 1 else 'F32'
            assert t.tensor_type.name == want, name
        q = torch.from_numpy(np.array(tensors['blk.0.attn_q.weight'].data, dtype=np.float32))
        k = torch.from_numpy(np.array(tensors['blk.1.attn_k.weight'].data, dtype=np.float32))
        tol = 0 if dtype == 'float32' else 1e-3
        assert torch.allclose(q, rope_permute(hf_weights['model.layers.0.self_attn.q_proj.weight'], c.n_head), atol=tol)
        assert torch.allclose(k, rope_permute(hf_weights['model.layers.1.self_attn.k_proj.weight'], c.n_kv_head), atol=tol)
        f = lambda key: r.fields[key].contents()
        assert f('general.architecture') == 'llama' and f('general.type') == 'model'
        assert (f('llama.block_count'), f('llama.context_length'), f('llama.embedding_length')) == (c.n_layer, c.block_size, c.n_embd)
        assert (f('llama.feed_forward_length'), f('llama.attention.head_count'), f('llama.attention.head_count_kv')) == \
               (c.mlp_hidden, c.n_head, c.n_kv_head)
        assert f('llama.rope.dimension_count') == c.head_dim and f('llama.vocab_size') == c.vocab_size
        assert f('llama.rope.freq_base') == pytest.approx(c.rope_base)
        assert f('llama.attention.layer_norm_rms_epsilon') == pytest.approx(c.norm_eps)
        assert f('general.file_type') == (0 if dtype == 'float32' else 1)
        assert f('tokenizer.ggml.model') == 'llama'
        assert [f(f'tokenizer.ggml.{k}_token_id') for k in ('bos', 'eos', 'unknown', 'padding')] == [1, 2, 0, 3]
        assert f('tokenizer.ggml.add_bos_token') is False and f('tokenizer.ggml.add_space_prefix') is False
        pieces, scores, types = gguf_vocab(tok)
        assert [p.encode() for p in f('tokenizer.ggml.tokens')] == pieces
        assert f('tokenizer.ggml.scores') == pytest.approx(scores)
        assert f('tokenizer.ggml.token_type') == types
        assert types.count(gguf.TokenType.BYTE) == 256 and types[:4] == [2, 3, 3, 3]


def test_gguf_read_by_transformers(trained, gguf_files, val_text):
    "transformers reads GGUF too (it undoes the q/k reordering): the logits match minillm's."
    import accelerate, transformers  # noqa: F401  development requirements (transformers reads GGUF with accelerate)
    model, tok = load(trained)
    batch = windows(tok, val_text, 4, model.config.block_size)
    for dtype, tol in (('float32', 1e-4), ('float16', 2e-2)):
        path = gguf_files[dtype]
        g = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        with torch.no_grad(): diff = (model(batch)[0] - g(batch).logits).abs().max().item()
        FIGURES[f'max_logit_diff_gguf_{dtype}_transformers'] = diff
        assert diff < tol, dtype


def test_llama_cpp_runs_the_gguf(trained, gguf_files, val_text):
    "llama.cpp itself: the same token ids, logits close to minillm's, the same 50 greedy tokens."
    llama_cpp = pytest.importorskip('llama_cpp', reason='llama-cpp-python is not installed (it compiles llama.cpp '
                                                        'from source for many minutes, so CI does not install it)')
    model, tok = load(trained)
    llm = llama_cpp.Llama(model_path=str(gguf_files['float32']), n_ctx=model.config.block_size, logits_all=True,
                          n_threads=2, verbose=False, type_k=0, type_v=0)  # a float32 key/value cache (its default is f16)
    for text in TRICKY[1:]:
        if '\x00' in text: continue  # a C string ends at the first zero byte
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text), text
    ids = tok.encode(val_text)[:model.config.block_size]
    llm.reset(); llm.eval(ids)
    with torch.no_grad(): mine = model(torch.tensor([ids]))[0][0].numpy()
    diff = float(np.abs(np.asarray(llm.scores[:len(ids)]) - mine).max())
    FIGURES['max_logit_diff_llama_cpp'] = diff
    assert diff < 1e-4
    prompt = ids[:12]
    want = torch.cat(list(next_tokens(model, torch.tensor([prompt]), lambda logits, i: logits.argmax(-1), 50))).tolist()
    llm.reset()
    got = []
    for t in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        got.append(t)
        if len(got) == 50: break
    assert got == want


# ---------------------------------------------------------------------------------------------- import-hf

def test_import_round_trip(trained, hf_dir, tmp_path, val_text):
    t0 = time.perf_counter()
    back = import_hf(hf_dir, tmp_path / 'back')
    FIGURES['import_hf_s'] = round(time.perf_counter() - t0, 3)
    (m1, tok1), (m2, tok2) = load(trained), load(back)
    assert m2.config == m1.config
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert sorted(s1) == sorted(s2) and all(torch.equal(s1[k], s2[k]) for k in s1)
    batch = windows(tok1, val_text, 2, m1.config.block_size)
    with torch.no_grad(): assert torch.equal(m1(batch)[0], m2(batch)[0])
    assert (back / 'tokenizer.model').read_bytes() == (trained / 'tokenizer.model').read_bytes()


def refusal(argv) -> tuple[int, str]:
    "Exit code and stderr of `minillm ARGV` (run in this process); the message must be one line."
    code, _, err = run_cli(argv)
    assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err, err
    return code, err.strip()


def edited_copy(src: Path, dst: Path, **config) -> Path:
    "A copy of an HF folder with some config.json entries changed (None removes one)."
    dst.mkdir()
    for p in src.iterdir(): (dst / p.name).write_bytes(p.read_bytes())
    cfg = {**json.loads((src / 'config.json').read_text()), **config}
    (dst / 'config.json').write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    return dst


def test_import_refuses_what_minillm_cannot_represent(hf_dir, tmp_path):
    cases = {'bias': dict(attention_bias=True), 'scaled': dict(rope_scaling={'rope_type': 'linear', 'factor': 2.0}),
             'gelu': dict(hidden_act='gelu'), 'mistral': dict(model_type='mistral'), 'headdim': dict(head_dim=16),
             'yarn': dict(rope_parameters={'rope_type': 'yarn', 'rope_theta': 10000.0, 'factor': 4.0})}
    for name, change in cases.items():
        code, err = refusal(['import-hf', str(edited_copy(hf_dir, tmp_path / name, **change)), '--out', str(tmp_path / f'o-{name}')])
        assert code == ExitCode.USAGE and 'cannot import' in err, (name, err)
        assert not (tmp_path / f'o-{name}').exists()
    no_tok = edited_copy(hf_dir, tmp_path / 'notok'); (no_tok / 'tokenizer.model').unlink()
    assert refusal(['import-hf', str(no_tok), '--out', str(tmp_path / 'o1')])[0] == ExitCode.USAGE
    pickled = edited_copy(hf_dir, tmp_path / 'pickled'); (pickled / 'model.safetensors').rename(pickled / 'pytorch_model.bin')
    code, err = refusal(['import-hf', str(pickled), '--out', str(tmp_path / 'o2')])
    assert code == ExitCode.USAGE and 'pickle' in err
    biased = edited_copy(hf_dir, tmp_path / 'biased')  # a bias tensor the config does not announce
    from safetensors.torch import load_file, save_file
    t = load_file(str(biased / 'model.safetensors')); t['model.layers.0.self_attn.q_proj.bias'] = torch.zeros(64)
    save_file(t, str(biased / 'model.safetensors'))
    code, err = refusal(['import-hf', str(biased), '--out', str(tmp_path / 'o3')])
    assert code == ExitCode.USAGE and 'q_proj.bias' in err
    assert refusal(['import-hf', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'o4')])[0] == ExitCode.GENERATION


# ---------------------------------------------------------------------------------------------- safety and CLI

def test_export_never_changes_the_checkpoint(trained, tmp_path):
    before = sha_tree(trained)
    export_hf(trained, tmp_path / 'a'); export_hf(trained, tmp_path / 'a', force=True)
    export_gguf(trained, tmp_path / 'a.gguf'); export_gguf(trained, tmp_path / 'a.gguf', dtype='float16', force=True)
    export_hf(trained.parent.parent, tmp_path / 'b')  # a training output directory: its best checkpoint
    assert sha_tree(trained) == before


def test_refuses_to_overwrite_without_force(trained, tmp_path):
    full = tmp_path / 'full'; full.mkdir(); (full / 'notes.txt').write_text('mine')
    code, err = refusal(['export', '--checkpoint', str(trained), '--format', 'hf', '--out', str(full)])
    assert code == ExitCode.USAGE and '--force' in err
    assert sorted(p.name for p in full.iterdir()) == ['notes.txt']
    gg = tmp_path / 'm.gguf'; gg.write_bytes(b'old')
    code, err = refusal(['export', '--checkpoint', str(trained), '--format', 'gguf', '--out', str(gg)])
    assert code == ExitCode.USAGE and gg.read_bytes() == b'old'
    code, out, _ = run_cli(['export', '--checkpoint', str(trained), '--format', 'gguf', '--out', str(gg), '--force'])
    assert code == 0 and gg.read_bytes()[:4] == b'GGUF' and 'exported' in out
    assert main(['export', '--checkpoint', str(trained), '--format', 'hf', '--out', str(full), '--force']) == 0
    assert (full / 'notes.txt').read_text() == 'mine' and (full / 'config.json').is_file()
    for out in (trained / 'x.gguf', trained):  # into the checkpoint itself: refused even with --force
        fmt = 'gguf' if out.suffix else 'hf'
        code, err = refusal(['export', '--checkpoint', str(trained), '--format', fmt, '--out', str(out), '--force'])
        assert code == ExitCode.USAGE and 'never change' in err
    code, err = refusal(['import-hf', str(full), '--out', str(full), '--force'])
    assert code == ExitCode.USAGE
    assert not list(tmp_path.glob('.*.tmp')) and not list(tmp_path.glob('**/.*.tmp'))


def test_bad_checkpoint_is_exit_code_6(trained, tmp_path):
    code, err = refusal(['export', '--checkpoint', str(tmp_path / 'nowhere'), '--format', 'hf', '--out', str(tmp_path / 'o')])
    assert code == ExitCode.GENERATION and 'not found' in err
    broken = tmp_path / 'broken'; broken.mkdir()
    for p in trained.iterdir():
        if p.is_file(): (broken / p.name).write_bytes(p.read_bytes())
    (broken / 'model.safetensors').write_bytes(b'not safetensors')
    for fmt in ('hf', 'gguf'):
        code, err = refusal(['export', '--checkpoint', str(broken), '--format', fmt, '--out', str(tmp_path / f'o.{fmt}')])
        assert code == ExitCode.GENERATION
        assert not (tmp_path / f'o.{fmt}').exists()
    with pytest.raises(SystemExit) as e:  # argparse: a usage line and an error line
        main(['export', '--checkpoint', str(trained), '--format', 'onnx', '--out', str(tmp_path / 'o')])
    assert e.value.code == ExitCode.USAGE


def test_missing_gguf_package_says_how_to_install(trained, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'gguf', None)  # import gguf now raises ImportError
    with pytest.raises(MinillmError, match='pip install gguf') as e: export_gguf(trained, tmp_path / 'm.gguf')
    assert e.value.exit_code == ExitCode.USAGE


def test_package_imports_without_transformers_and_gguf():
    code = ("import sys; sys.modules['transformers'] = sys.modules['gguf'] = sys.modules['accelerate'] = None\n"
            "import minillm.export, minillm.core\n"
            "names = minillm.core.build_parser()._subparsers._group_actions[0].choices\n"
            "assert 'export' in names and 'import-hf' in names, names")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


# ---------------------------------------------------------------------------------------------- other shapes

@pytest.mark.parametrize('shape', [dict(n_head=4, n_kv_head=2, tie_embeddings=True),     # grouped-query attention
                                   dict(n_head=4, n_kv_head=1, tie_embeddings=False, rope_base=500.0)])  # untied, other base
def test_other_shapes_match(data, val_text, tmp_path, shape):
    import transformers
    tok = Tokenizer.load(data)
    torch.manual_seed(0)
    m = MiniLLM(ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_embd=64, **shape)).eval()
    with torch.no_grad():  # random norm gains, so a wrong mapping cannot hide behind all-ones weights
        for name, p in m.named_parameters():
            if p.ndim == 1: p.uniform_(0.5, 1.5)
    ck = save_model(m, tmp_path / 'ck'); (ck / 'tokenizer.model').write_bytes((data / 'tokenizer.model').read_bytes())
    batch = windows(tok, val_text, 2, 64)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(export_hf(ck, tmp_path / 'hf'), dtype=torch.float32).eval()
    assert hf_model.config.num_key_value_heads == shape['n_kv_head']
    assert hf_model.config.tie_word_embeddings == shape['tie_embeddings']
    with torch.no_grad(): assert (m(batch)[0] - hf_model(batch).logits).abs().max() < 1e-4
    gg = export_gguf(ck, tmp_path / 'm.gguf')
    import gguf
    names = {t.name for t in gguf.GGUFReader(gg).tensors}
    assert ('output.weight' in names) == (not shape['tie_embeddings'])
    g = transformers.AutoModelForCausalLM.from_pretrained(gg.parent, gguf_file=gg.name, dtype=torch.float32).eval()
    with torch.no_grad(): assert (m(batch)[0] - g(batch).logits).abs().max() < 1e-4
    back, _ = load(import_hf(tmp_path / 'hf', tmp_path / 'back'))
    assert all(torch.equal(back.state_dict()[k], v) for k, v in m.state_dict().items())


def test_unigram_tokenizer(data, val_text, tmp_path):
    "A unigram tokenizer: transformers gets identical ids through its generic fast tokenizer; GGUF export refuses it."
    import transformers
    tok = Tokenizer.load(train_tokenizer(data.parent / 'corpus', tmp_path / 'uni', vocab_size=1024, model_type='unigram'))
    assert spm_model_type(tok) == 'unigram' and spm_model_type(Tokenizer.load(data)) == 'bpe'
    ck = save_model(MiniLLM(ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_kv_head=2, n_embd=32)),
                    tmp_path / 'ck')
    (ck / 'tokenizer.model').write_bytes(tok.path.read_bytes())
    hf_tok = transformers.AutoTokenizer.from_pretrained(export_hf(ck, tmp_path / 'hf'))
    for text in TRICKY + [val_text]: assert hf_tok.encode(text) == tok.encode(text), text[:40]
    code, err = refusal(['export', '--checkpoint', str(ck), '--format', 'gguf', '--out', str(tmp_path / 'm.gguf')])
    assert code == ExitCode.USAGE and 'BPE' in err and not (tmp_path / 'm.gguf').exists()
