"""How long does `minillm pipeline` take, all phases included, and what does its model score? The quality
issue's targets on two CPU cores: the default run in at most 5 minutes, at most 1.85 bits per byte on all
of val.bin, at most 0.90 x the Kneser-Ney trigram's bits per byte.

    python benchmarks/pipeline_time.py                                  # the default run, 3 times
    python benchmarks/pipeline_time.py --repeat 1 -- --epochs 1 --max-time 1m \\
        --validation-param max_bpb_ratio=1.5 --validation-param min_word_fraction=0.5   # the quick check
    python benchmarks/pipeline_time.py --cores 2 --keep runs/bench --json pipeline.json

Each run is a fresh `python -m minillm pipeline` process in a new run directory (offline, the bundled
corpus), pinned to `--cores` cores, with the options given after `--`. Prints the machine (CPU model and
flags, cores, threads, date), then each run's wall time, phase times (from RUN/summary.json), training
speed and validation result, then the min, median and max of the wall time and of bits per byte; exits 1
if a run fails.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, header  # noqa: E402


def time_run(run_dir: Path, extra: list) -> dict:
    "Run the pipeline once; its wall time and what its summary says."
    cmd = [sys.executable, '-m', 'minillm', 'pipeline', '--run-dir', str(run_dir), '--force-restart', *extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    out = {'command': ' '.join(cmd[2:]), 'exit_code': r.returncode,
           'wall_s': round(time.perf_counter() - t0, 1)}
    if r.returncode: out['error'] = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''
    s = run_dir / 'summary.json'
    if s.exists():
        s = json.loads(s.read_text())
        t = s.get('training', {})
        out['phase_s'] = s['phase_seconds']
        out['training'] = {k: t.get(k) for k in ('steps', 'elapsed_s', 'tokens_per_s', 'dtype')}
        out['validation'] = {k: v for k, v in s['validation'].items() if not isinstance(v, (list, dict))}
        out['baselines'] = s['validation'].get('baselines')
    return out


def spread(xs: list) -> str:
    return f'min {min(xs):g}, median {statistics.median(xs):g}, max {max(xs):g}' if xs else 'none'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--repeat', type=int, default=3, help='how many runs (default 3)')
    p.add_argument('--cores', type=int, default=2, help='pin the runs to this many cores (default 2)')
    p.add_argument('--keep', help='keep the run directories under this folder (default: a temp dir)')
    p.add_argument('--json', type=Path, help='also write the results here')
    p.add_argument('extra', nargs='*', help='`minillm pipeline` options, after --')
    a = p.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))[:a.cores]
    os.sched_setaffinity(0, cores)  # children inherit it
    root = Path(a.keep or tempfile.mkdtemp(prefix='minillm-bench-'))
    info = describe()
    print(header(info)); print(f'pinned to cores {cores}; run dirs in {root}', flush=True)
    runs = []
    for i in range(a.repeat):
        r = time_run(root / f'run{i + 1}', a.extra)
        v = r.get('validation', {})
        print(f'run {i + 1}: {r["wall_s"]:.1f} s (exit {r["exit_code"]}) phases {r.get("phase_s")} '
              f'training {r.get("training")} val_bpb {v.get("val_bpb")} passed {v.get("passed")} '
              f'{r.get("error", "")}', flush=True)
        runs.append(r)
    walls = [r['wall_s'] for r in runs if not r['exit_code']]
    bpbs = [r['validation']['val_bpb'] for r in runs if r.get('validation', {}).get('val_bpb')]
    print(f'\nwall seconds: {spread(walls)}\nbits per byte: {spread(bpbs)}')
    if a.json: a.json.write_text(json.dumps(dict(info, runs=runs), indent=1))
    return 1 if any(r['exit_code'] for r in runs) else 0


if __name__ == '__main__': sys.exit(main())
