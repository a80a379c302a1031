"""`score` and `build-bank` on a Ray cluster.

Optional (`pip install memorization-index[ray]`); one machine needs no Ray. `--workers N`
starts a local cluster of N worker processes; `--ray-address auto|HOST:PORT` joins a running
one (`ray start --head` on Slurm or Kubernetes, see the README).

build-bank: the training volumes are encoded as Ray Data batch inference, `map_batches`
over the volumes still to do with an actor pool: each actor holds one encoder (built from
the bank settings and the checkpoint, checked against the driver's by its SHA-256) and a
GPU when the cluster has GPUs, encodes one volume per call and returns its piece
(encoding/features.py) packed as bytes. With GPUs, reading and preprocessing run as a Ray
Data stage of CPU tasks of their own ahead of the actors (`map`), so that a GPU does not
wait for each volume's reading; on CPUs each actor reads its own volumes. The driver saves
each piece in the resume folder as it arrives and merges them in input order, exactly as
the single-process build does, so the bank is the same and a killed distributed build
resumes too. The calibration null, the index and the bank's files are made on the driver.
Ray Data restarts an actor that dies and retries its volume.

score: sharded by synthetic volume, the bank read-only and shared. Every task scores one
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

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import SettingsError
from .openmp import DUPLICATE_SWITCH, allow_duplicate_runtimes
from .pieces import Runner, pack, unpack
from .scoring.resume import local_runner, score_resumable, score_volume

RAY_MISSING = (
    "--workers and --ray-address run on Ray, which is not installed: "
    "pip install memorization-index[ray]"
)
MAX_RETRIES = 3  # reruns of a task whose worker process died
TASKS_PER_CPU = 2  # tasks kept in flight per cluster CPU

_loaded: dict[tuple, tuple] = {}  # per worker process: (bank path, ...) -> (bank, encoder)


def require_ray(data: bool = False):
    """The ray module (with Ray Data when `data`: build-bank encodes with it), or a
    SettingsError that says how to install it."""
    try:
        import ray

        if data:
            import ray.data  # noqa: F401  (pyarrow, from ray[data])
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
    from .bank.feature_bank import load_bank

    match_threads(threads)
    key = (os.path.abspath(bank_path), *encoder_args)
    if key not in _loaded:
        _loaded.clear()
        bank = load_bank(bank_path)
        _loaded[key] = (bank, bank.load_encoder(*encoder_args))
    bank, encoder = _loaded[key]
    return score_volume(bank, source, encoder, options, alpha)


def match_threads(threads: int) -> None:
    """Run torch on the driver's number of threads (Ray starts workers with one): its
    parallel reductions split the work by thread, so another count can change last bits."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


class RayCluster:
    """A local Ray cluster of `workers` processes, or the running one at `address`."""

    def __init__(self, workers: int | None = None, address: str | None = None):
        check_workers(workers, address)
        self.ray = require_ray()
        self.workers = workers
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
                    runtime_env={"env_vars": {"PYTHONPATH": path, **_openmp_switch()}},
                )
            self.started = True

    def resources(self, name: str) -> int:
        return int(self.ray.cluster_resources().get(name, 0))

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False


class RayRunner:
    """`make(sources, options)` is a scoring/resume.py Runner on a RayCluster."""

    def __init__(self, cluster: RayCluster, bank_path: str, encoder_args: tuple, alpha: float):
        self.cluster = cluster
        self.ray = cluster.ray
        self.bank_path = os.path.abspath(bank_path)
        self.encoder_args = encoder_args
        self.alpha = alpha
        self.threads = cluster.threads
        self.task = self.ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(score_one)

    def make(self, sources, options):
        def run(pending: list[int]) -> Iterator[tuple[int, object]]:
            ray = self.ray
            window = max(1, TASKS_PER_CPU * self.cluster.resources("CPU"))
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


# ---- build-bank: encoding as Ray Data batch inference ---------------------------------------
def prepare_row(row: dict, sources, read_options, plan, spec, cwd: str) -> dict:
    """Ray Data's read-and-preprocess stage (a CPU task): one volume, prepared for the
    encoder actors (features.prepare_volume), packed as bytes."""
    from .encoding.features import prepare_volume, prepared_to_bytes

    _in_driver_folder(cwd)
    i = int(row["index"])
    prepared = prepare_volume(sources[i], read_options, plan, spec, index=i)
    return {"index": i, "prepared": prepared_to_bytes(prepared)}


def _in_driver_folder(cwd: str) -> None:
    """Relative input paths start where the driver runs (the same folder on every node)."""
    if os.getcwd() != cwd and os.path.isdir(cwd):
        os.chdir(cwd)


class VolumeEncoder:
    """A Ray Data actor: one encoder, loaded once, encoding one training volume per row:
    a prepared one (column "prepared", from prepare_row) or one it reads itself.

    encoder_args: (BankSettings, checkpoint, encoder config dict, device, batch size) as
    BankSettings.encoder takes them; expected: the driver's EncoderInfo dict, which the
    worker's encoder must match (the same checkpoint bytes, architecture, layers)."""

    def __init__(self, sources, read_options, plan, encoder_args, expected, threads, cwd):
        match_threads(threads)
        _in_driver_folder(cwd)
        settings, checkpoint, config, device, batch_size = encoder_args
        self.encoder = settings.encoder(checkpoint, config, device, batch_size)
        if self.encoder.info.to_dict() != expected:
            raise SettingsError(
                f"A Ray worker's encoder differs from the driver's ({self.encoder.info.name}, "
                f"checkpoint {self.encoder.info.checkpoint}): every worker needs the same "
                "checkpoint file at the same path."
            )
        self.sources, self.read_options, self.plan = sources, read_options, plan

    def __call__(self, batch: dict) -> dict:
        from .encoding.features import (
            EncodedFiles,
            encode_prepared,
            encode_volume,
            pins,
            prepared_from_bytes,
        )
        from .job import Job

        packed = []
        for k, i in enumerate(batch["index"]):
            if "prepared" in batch:
                prepared = prepared_from_bytes(batch["prepared"][k], pins(self.encoder))
                piece = encode_prepared(self.encoder, prepared, Job().step(None, 1))
            else:
                source = self.sources[int(i)]
                piece = encode_volume(source, self.encoder, self.read_options, self.plan, int(i))
            packed.append(pack(*EncodedFiles.to_parts(piece)))
        return {"index": np.asarray(batch["index"]), "piece": np.array(packed, dtype=object)}


def encoding_runner(
    cluster: RayCluster,
    encoder,
    encoder_args: tuple,
    split: bool | None = None,
    actor_cpus: float = 1.0,
):
    """build_bank's `runner`: (sources, read_options, plan) -> a pieces.py Runner that
    encodes on the cluster (map_batches over an actor pool; see the module docstring).

    split: read and preprocess in CPU tasks of their own, ahead of the encoder actors
    (default: when the actors have GPUs, which would otherwise wait for each volume's
    reading); without it each actor reads its volumes itself (on CPUs the encoder is
    the bottleneck and a separate stage would only compete for the same cores).
    actor_cpus: CPUs reserved per actor (below 1 leaves room for the tasks on a small
    cluster)."""
    from .encoding.features import EncodedFiles

    def make(sources, read_options, plan) -> Runner:
        def run(pending: list[int]) -> Iterator[tuple[int, object]]:
            if not pending:
                return
            import ray.data

            gpus = cluster.resources("GPU") if encoder_args[3] != "cpu" else 0
            actors = cluster.workers or gpus or cluster.resources("CPU")
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False  # the CLI shows its own
            context.print_on_execution_start = False
            logging.getLogger("ray.data").setLevel(logging.ERROR)  # and says what it does
            cwd = os.getcwd()
            volumes = ray.data.from_items(
                [{"index": i} for i in pending], override_num_blocks=len(pending)
            )
            if split if split is not None else gpus > 0:
                args = (sources, read_options, plan, encoder.spec, cwd)
                volumes = volumes.map(prepare_row, fn_args=args, num_cpus=1)
            expected = encoder.info.to_dict()
            pieces = volumes.map_batches(
                VolumeEncoder,
                fn_constructor_args=(
                    sources,
                    read_options,
                    plan,
                    encoder_args,
                    expected,
                    cluster.threads,
                    cwd,
                ),
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=max(1, min(actors, len(pending)))),
                num_cpus=actor_cpus,
                num_gpus=1 if gpus else 0,
            )
            for row in pieces.iter_rows():
                yield int(row["index"]), EncodedFiles.from_parts(*unpack(row["piece"]))

        return run

    return make


def build_on_ray(train_dir, out, settings, encoder, job, args):
    """The CLI's `build-bank --workers/--ray-address`: build_bank with the encoding on Ray."""
    from .bank.build import build_bank

    cluster = RayCluster(args.workers, args.ray_address)
    try:
        info = encoder.info  # the checkpoint by its absolute path
        encoder_args = (settings, info.checkpoint, info.config, args.device, args.batch_size)
        return build_bank(
            train_dir,
            out,
            settings,
            encoder,
            job,
            args.subjects,
            runner=encoding_runner(cluster, encoder, encoder_args),
            run_settings={"device": f"ray {args.device}"},
            subject_pattern=getattr(args, "subject_pattern", None),
        )
    finally:
        cluster.close()


def score_in_pieces(bank, encoder, args, job):
    """The CLI's `score`: resumable (scoring/resume.py), in this process or on Ray
    (--workers, --ray-address); returns the result and the resume folder to remove."""
    encoder_args = (args.checkpoint, args.device, args.batch_size)
    ray_runner = None
    if args.workers is not None or args.ray_address:
        cluster = RayCluster(args.workers, args.ray_address)
        ray_runner = RayRunner(cluster, bank.path, encoder_args, args.alpha)
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
            internal_duplicates=not getattr(args, "no_internal_duplicates", False),
        )
    finally:
        if ray_runner is not None:
            ray_runner.cluster.close()


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _openmp_switch() -> dict[str, str]:
    """Ray's workers import torch and faiss too: the same OpenMP switch (openmp.py)."""
    environ = (
        {DUPLICATE_SWITCH: os.environ[DUPLICATE_SWITCH]} if DUPLICATE_SWITCH in os.environ else {}
    )
    allow_duplicate_runtimes(environ)
    return environ
