"""`score` on a Ray cluster: sharded by synthetic volume, the bank read-only and shared.

Optional (`pip install memorization-index[ray]`); one machine needs no Ray. `--workers N`
starts a local cluster of N worker processes; `--ray-address auto|HOST:PORT` joins a running
one (`ray start --head` on Slurm or Kubernetes, see the README). Every task scores one
synthetic volume: the worker loads the bank from its path (once per worker process; the
bank's large arrays are memory-mapped when it is compressed, so workers on one machine
share them through the page cache) and the bank's encoder, and returns the volume's piece
(scoring/resume.py). The driver saves each piece into the resume folder as it arrives and
merges them in input order, exactly as the single-process run does, so the report is the
same and a killed distributed run resumes too. A task whose worker dies is run again
(Ray's max_retries); an error in the data (an unreadable scan) is a skipped input, as
without Ray.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from .errors import SettingsError
from .scoring.resume import local_runner, score_resumable, score_volume

RAY_MISSING = (
    "--workers and --ray-address run on Ray, which is not installed: "
    "pip install memorization-index[ray]"
)
MAX_RETRIES = 3  # reruns of a task whose worker process died
TASKS_PER_CPU = 2  # tasks kept in flight per cluster CPU

_loaded: dict[tuple, tuple] = {}  # per worker process: (bank path, ...) -> (bank, encoder)


def require_ray():
    """The ray module, or a SettingsError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise SettingsError(RAY_MISSING) from exc
    return ray


def check_workers(workers: int | None, address: str | None) -> None:
    if workers is not None and workers < 1:
        raise SettingsError(f"--workers must be at least 1 (got {workers}).")
    if workers is not None and address:
        raise SettingsError("Give --workers (a local cluster) or --ray-address, not both.")


def score_one(bank_path: str, encoder_args: tuple, source, options, alpha: float, threads: int):
    """A Ray task: one synthetic volume's piece, with the bank and encoder loaded once per
    worker process.

    torch runs on the driver's number of threads: its parallel reductions (the verifier's
    NCC sums) split the work by thread, so another count changes the last bits of a score
    (Ray starts workers with one thread).
    """
    import torch

    from .bank.feature_bank import load_bank

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)

    key = (os.path.abspath(bank_path), *encoder_args)
    if key not in _loaded:
        _loaded.clear()
        bank = load_bank(bank_path)
        _loaded[key] = (bank, bank.load_encoder(*encoder_args))
    bank, encoder = _loaded[key]
    return score_volume(bank, source, encoder, options, alpha)


class RayRunner:
    """Starts or joins a cluster; `make(sources, options)` is a scoring/resume.py Runner."""

    def __init__(
        self,
        bank_path: str,
        encoder_args: tuple,
        alpha: float,
        workers: int | None = None,
        address: str | None = None,
    ):
        check_workers(workers, address)
        self.ray = require_ray()
        self.bank_path = os.path.abspath(bank_path)
        self.encoder_args = encoder_args
        self.alpha = alpha
        self.threads = _torch_threads()
        self.started = False
        if not self.ray.is_initialized():
            # Local workers import this very copy of the package (not another install).
            package_root = str(Path(__file__).resolve().parents[1])
            path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
            if address:
                self.ray.init(address=address, logging_level="WARNING")
            else:
                self.ray.init(
                    num_cpus=workers,
                    include_dashboard=False,
                    logging_level="WARNING",
                    runtime_env={"env_vars": {"PYTHONPATH": path}},
                )
            self.started = True
        self.task = self.ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(score_one)

    def make(self, sources, options):
        def run(pending: list[int]) -> Iterator[tuple[int, object]]:
            ray = self.ray
            window = max(1, TASKS_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))
            todo = list(pending)
            running: dict = {}
            while todo or running:
                while todo and len(running) < window:
                    i = todo.pop(0)
                    ref = self.task.remote(
                        self.bank_path,
                        self.encoder_args,
                        sources[i],
                        options,
                        self.alpha,
                        self.threads,
                    )
                    running[ref] = i
                finished, _ = ray.wait(list(running), num_returns=1)
                for ref in finished:
                    yield running.pop(ref), ray.get(ref)

        return run

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False


def score_in_pieces(bank, encoder, args, job):
    """The CLI's `score`: resumable (scoring/resume.py), in this process or on Ray
    (--workers, --ray-address); returns the result and the resume folder to remove."""
    encoder_args = (args.checkpoint, args.device, args.batch_size)
    ray_runner = None
    if args.workers is not None or args.ray_address:
        ray_runner = RayRunner(bank.path, encoder_args, args.alpha, args.workers, args.ray_address)
    try:

        def make_runner(sources, options):
            if ray_runner is not None:
                return ray_runner.make(sources, options)
            return local_runner(bank, sources, encoder, options, args.alpha, job)

        return score_resumable(
            bank,
            args.synth_dir,
            args.out,
            make_runner,
            encoder.info.to_dict(),
            args.alpha,
            args.stride,
            job,
            {"device": args.device, "batch_size": args.batch_size},
        )
    finally:
        if ray_runner is not None:
            ray_runner.close()


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
