"""One short real run of every chapter with validation at its default rules: on text a transformer learns and
counting cannot, it must pass. (A file of its own, so that pytest-xdist runs it beside test_pipeline.py's runs.)"""
import json, subprocess, sys

import pytest
from helpers import sentence_cycle

FAST = ['--min-free-disk', '0.01']


@pytest.mark.timeout(960)   # the run's own limit is 900 s
def test_end_to_end_passes_the_default_thresholds(tmp_path):
    "A short real run of every chapter on text a transformer learns and counting cannot: validation passes at its defaults."
    books = tmp_path/'books'; books.mkdir()
    for i, doc in enumerate(sentence_cycle()): (books/f'part{i}.txt').write_text(doc + '\n')
    r = subprocess.run([sys.executable, '-m', 'minillm', 'pipeline', '--run-dir', str(tmp_path/'run'), '--files', str(books),
                        '--vocab-size', '400', '--model', 'tiny', '--block-size', '32', '--n-embd', '64', '--epochs', '60',
                        '--steps', '300', '--batch-size', '16', '--learning-rate', '3e-3', '--warmup', '20',
                        '--eval-batches', '2', '--device', 'cpu', *FAST], capture_output=True, text=True, cwd=tmp_path,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    v = json.loads((tmp_path/'run'/'validation.json').read_text())
    assert v['passed'] is True and v['thresholds_changed'] == {}, v['checks']
    from minillm.generation import ValidateConfig
    assert v['val_bpb'] <= ValidateConfig().max_bpb_ratio * min(v['baselines']['bigram'], v['baselines']['trigram'])
    assert '## From the first step to the last' in (tmp_path/'run'/'report.md').read_text()
