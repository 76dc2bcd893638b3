"""minillm: build and train a small Llama-style language model, one notebook at a time.

The main entry points, importable from here (each loads its module, and PyTorch, on first use):

    import minillm
    model, tok = minillm.load('runs/default/train')            # a checkpoint or a training run's folder
    print(minillm.generate(model, tok, 'It was a dark night', max_new_tokens=40, seed=1))
    minillm.train(minillm.TrainConfig(data_dir='runs/default/data', out_dir='runs/mine', max_time='2m'))
    model = minillm.MiniLLM(minillm.ModelConfig(vocab_size=4096, **minillm.MODEL_PRESETS['tiny']))

The chapters are the modules: `minillm.corpus`, `minillm.tokenizer`, `minillm.model`, `minillm.checkpoint`,
`minillm.training`, `minillm.generation`, `minillm.pipeline`, `minillm.export`; `minillm --help` lists the
commands. This file is written by hand (nbdev only updates the `__version__` line below).
"""
__version__ = "0.1.0"

# name -> module: `import minillm` stays fast (no PyTorch) until one of these is used
_LAZY = {'load': 'checkpoint', 'generate': 'generation', 'validate': 'generation', 'train': 'training',
         'TrainConfig': 'training', 'MiniLLM': 'model', 'ModelConfig': 'model', 'MODEL_PRESETS': 'model',
         'count_params': 'model', 'Tokenizer': 'tokenizer', 'build_corpus': 'corpus',
         'run_pipeline': 'pipeline', 'PipelineConfig': 'pipeline', 'MinillmError': 'core', 'ExitCode': 'core'}
__all__ = list(_LAZY)


def __getattr__(name):
    "Import the module that defines `name` the first time it is asked for (PEP 562)."
    if name not in _LAZY: raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    import importlib
    value = getattr(importlib.import_module(f'{__name__}.{_LAZY[name]}'), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__(): return sorted(set(globals()) | set(_LAZY))
