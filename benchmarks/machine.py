"""What a speed figure depends on: the CPU (model and the flags that decide which kernels run), the cores
this process may use, torch's threads and OpenMP's wait policy, versions, load and the date.
Imported by the speed benchmarks (vs_nanogpt.py, train_speed.py, generation_speed.py)."""
import datetime as dt, os, platform

FLAGS = ('avx2', 'fma', 'avx512f', 'avx512_bf16', 'avx512_vnni', 'amx_tile', 'amx_bf16')


def cpu() -> dict:
    "The CPU's model name and which of FLAGS it has (from /proc/cpuinfo on Linux)."
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() == 'model name': name = value.strip()
                if key.strip() == 'flags': flags = set(value.split()); break
    except OSError: pass
    return dict(model=name, flags=[f for f in FLAGS if f in flags], bf16_units=bool({'avx512_bf16', 'amx_bf16'} & flags))


def describe(threads: int | None = None) -> dict:
    "Everything a figure depends on, as a JSON-ready dictionary."
    import torch
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    return dict(cpu=cpu(), cores=cores, torch_threads=threads or torch.get_num_threads(),
                omp_wait_policy=os.environ.get('OMP_WAIT_POLICY', '(default)'),
                torch=torch.__version__, python=platform.python_version(),
                load_average=[round(x, 2) for x in os.getloadavg()] if hasattr(os, 'getloadavg') else None,
                date=dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds'))


def header(info: dict) -> str:
    "The machine as two lines of text, for the top of a benchmark's output."
    c = info['cpu']
    return (f"CPU: {c['model']}; flags: {' '.join(c['flags']) or 'none of ' + ', '.join(FLAGS)}; "
            f"{'has' if c['bf16_units'] else 'no'} bfloat16 units\n"
            f"{info['cores']} cores usable, {info['torch_threads']} torch threads, OMP_WAIT_POLICY "
            f"{info['omp_wait_policy']}, torch {info['torch']}, load {info['load_average']}, {info['date']}")
