"""How long does `minillm pipeline` take, all phases included? (Chapter 7 promises at most 7 minutes for the
default run and 2 minutes for `--epochs 5` on a 2-core CPU machine, validation passing.)

    python benchmarks/pipeline_time.py                    # --epochs 5, then the default 20 epochs
    python benchmarks/pipeline_time.py --runs "5"         # only the quick check
    python benchmarks/pipeline_time.py --cores 2 --keep runs/bench

Each run is a fresh `python -m minillm pipeline` process in a new run directory (offline, the bundled
corpus), pinned to `--cores` cores. Prints the wall time, each phase's time (from RUN/summary.json), the
final validation loss, and a JSON summary at the end; exits 1 if a run fails.
"""
import argparse, json, os, platform, subprocess, sys, tempfile, time
from pathlib import Path


def machine() -> str:
    "A one-line description of this machine: CPU model, cores, Python and PyTorch."
    cpu = platform.processor() or ''
    try: cpu = next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): pass
    import torch
    return f'{cpu}, {len(os.sched_getaffinity(0))} cores usable, Python {platform.python_version()}, torch {torch.__version__}'


def time_run(epochs: int, run_dir: Path, extra: list) -> dict:
    "Run the pipeline once with `epochs`; return its wall time and what its summary says."
    cmd = [sys.executable, '-m', 'minillm', 'pipeline', '--run-dir', str(run_dir), '--force-restart', *extra]
    if epochs != 20: cmd += ['--epochs', str(epochs)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    out = {'epochs': epochs, 'command': ' '.join(cmd[2:]), 'exit_code': r.returncode, 'wall_s': round(wall, 1)}
    if r.returncode: out['error'] = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''
    s = run_dir/'summary.json'
    if s.exists():
        s = json.loads(s.read_text())
        out['phase_s'] = s['phase_seconds']
        out['final_val_loss'] = s['training'].get('final_val_loss')
        out['validation'] = {k: v for k, v in s['validation'].items() if not isinstance(v, (list, dict))}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--runs', default='5,20', help='comma-separated epoch counts to time (default 5,20)')
    p.add_argument('--cores', type=int, default=2, help='pin the runs to this many cores (default 2)')
    p.add_argument('--keep', help='keep the run directories under this folder (default: a temp dir)')
    p.add_argument('extra', nargs='*', help='more `minillm pipeline` options, after --')
    a = p.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))[:a.cores]
    os.sched_setaffinity(0, cores)  # children inherit it
    root = Path(a.keep or tempfile.mkdtemp(prefix='minillm-bench-'))
    print(f'machine: {machine()}; pinned to cores {cores}; run dirs in {root}', flush=True)
    results = []
    for e in (int(x) for x in a.runs.split(',')):
        r = time_run(e, root/f'epochs{e}', a.extra)
        print(f'--epochs {e}: {r["wall_s"]:.0f} s (exit {r["exit_code"]}) phases {r.get("phase_s")} '
              f'val loss {r.get("final_val_loss")} {r.get("error", "")}', flush=True)
        results.append(r)
    print(json.dumps({'machine': machine(), 'cores': len(cores), 'runs': results}, indent=2))
    return 1 if any(r['exit_code'] for r in results) else 0


if __name__ == '__main__': sys.exit(main())
