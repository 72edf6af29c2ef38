"""``resources: {pack: auto}``: how many trials run at once, and each one's shares.

Packing several trials lets one trial's start-up, evaluations and teardown overlap another's
training. The rule, from the cluster's CPUs ``C`` and GPUs ``G`` and the trial's ``W`` workers:

- CPU trials: ``K = min(trials, floor(C / (W × 0.5)))`` trials at once (every worker keeps at
  least half a core), each driver ``0.1`` CPU, each worker ``(C − 0.1 K) / (K W)`` CPU (rounded
  down to 0.01). On 2 cores with 2-worker trials: 2 trials of 2 × 0.45 CPU + 0.1.
- GPU trials (``gpus_per_worker`` > 0): NCCL refuses two ranks of one process group on one
  device, and Ray may place two fractional-GPU workers of one trial on the same GPU, so only
  one-worker trials share a GPU (two per GPU, 0.5 each); a multi-worker trial takes a whole GPU
  per worker and ``K = floor(G / W)``.
"""

from __future__ import annotations

import math
import os

from jepa_sweeps.spec import SweepSpec

DRIVER_CPUS = 0.1
MIN_WORKER_CPUS = 0.5


def local_capacity() -> tuple[float, float]:
    """(CPUs, GPUs) of the Ray the runner starts on this machine (``run.init_ray``)."""
    import torch

    return float(max(os.cpu_count() or 1, 2)), float(torch.cuda.device_count())


def cluster_capacity() -> tuple[float, float]:
    import ray

    total = ray.cluster_resources()
    return float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0))


def pack(spec: SweepSpec, cpus: float, gpus: float) -> SweepSpec:
    """``spec`` with concrete ``max_concurrent_trials`` and shares when ``pack: auto``."""
    r = spec.resources
    if r.pack != "auto":
        return spec
    trials, workers = spec.num_samples * spec.seeds, r.workers
    gpu_per_worker = 0.0
    if r.gpus_per_worker > 0 and gpus > 0:
        gpu_per_worker = 0.5 if workers == 1 else 1.0
        by_gpu = int(gpus // (workers * gpu_per_worker))
        by_cpu = int(cpus // (workers * 0.01 + DRIVER_CPUS))
        concurrent = max(1, min(trials, by_gpu, by_cpu))
    else:
        concurrent = max(1, min(trials, int(cpus // (workers * MIN_WORKER_CPUS))))
    share = math.floor((cpus - concurrent * DRIVER_CPUS) / (concurrent * workers) * 100) / 100
    if share <= 0:  # a cluster too small for even one trial: leave the spec's own values to fail visibly
        return spec
    resolved = r.model_copy(update={
        "max_concurrent_trials": concurrent, "cpus_per_worker": share, "driver_cpus": DRIVER_CPUS,
        "gpus_per_worker": gpu_per_worker if gpu_per_worker else r.gpus_per_worker,
    })
    return spec.model_copy(update={"resources": resolved})
