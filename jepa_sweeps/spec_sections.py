"""The sections of a sweep spec beside the trial and its search: scheduler, Optuna, resources,
budget, MLflow and failure handling. Each has defaults for every field; ``SweepSpec`` holds them."""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator

from jepa_sweeps.config import BadValue, Strict

class SchedulerSpec(Strict):
    name: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(3, ge=1, description="epochs before ASHA may stop a trial")
    reduction_factor: float = Field(2.0, gt=1.0)


class OptunaSpec(Strict):
    seed: int = Field(0, ge=0, lt=2**32, description="numpy's RandomState takes 0 ≤ seed < 2³²")
    n_startup_trials: int | None = Field(None, ge=0, le=100000, description="random trials before TPE acts")


class ResourcesSpec(Strict):
    workers: int = Field(2, ge=1, le=4096, description="DDP workers per trial")
    cpus_per_worker: float = Field(0.5, gt=0.0, le=1024)
    gpus_per_worker: float = Field(0.0, ge=0.0, le=64)
    driver_cpus: float = Field(0.5, gt=0.0, le=64, description="CPUs of each trial's driver")
    max_concurrent_trials: int = Field(1, ge=1, le=10000)
    driver_resources: dict[str, float] = Field(
        default_factory=dict, description="custom resources pinning trial drivers, e.g. {head: 0.01}"
    )
    pack: Literal["off", "auto"] = Field(
        "off", description="auto: the runner chooses concurrent trials and shares from the cluster (jepa_sweeps.packing)"
    )
    cluster_max: dict[str, float] = Field(
        default_factory=dict, description="what an autoscaling cluster can grow to, e.g. {CPU: 64, GPU: 8}"
    )

    @field_validator("driver_resources", "cluster_max")
    @classmethod
    def _amounts(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if not RESOURCE.fullmatch(name):
                raise BadValue(name, amount, "not a resource name (letters, digits, '_', '-', ':', '.', '/')")
            if not 0 < amount <= 1e9:
                raise BadValue(name, amount, "must be a positive amount")
        return value


class BudgetSpec(Strict):
    """At most this much compute; the rule is in ``jepa_sweeps.accounting``."""

    device_hours: float | None = Field(None, gt=0.0, le=1e7, description="GPU-hours on GPU trials, else CPU-hours")
    wall_minutes: float | None = Field(None, gt=0.0, le=1e7)

    @model_validator(mode="after")
    def _some(self) -> BudgetSpec:
        if self.device_hours is None and self.wall_minutes is None:
            raise ValueError("budget: needs device_hours and/or wall_minutes (either or both)")
        return self


RESOURCE = re.compile(r"[A-Za-z_][A-Za-z0-9_:./-]*")


class MLflowSpec(Strict):
    tracking_uri: str | None = None
    experiment: str | None = Field(None, min_length=1, max_length=200)

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        """A malformed URI (bad port, unclosed IPv6 bracket) is refused here, not where it is used."""
        if value is not None:
            if not value.strip() or value != value.strip():
                raise BadValue("", value, "empty or surrounded by spaces")
            try:
                urlparse(value).port
            except ValueError:  # its text quotes the netloc, which may hold a password
                raise BadValue("", value, "not a valid URI (a port that is not a number, or an unclosed '[')") from None
        return value

    @field_validator("experiment")
    @classmethod
    def _experiment(cls, value: str | None) -> str | None:
        """The experiment names the artifact folder of a local store: it must stay one folder."""
        if value is not None and (value.strip(".") == "" or any(c in value for c in "/\\\0")):
            raise BadValue("", value, "must not contain '/', '\\' or be '.'/'..' (it names a folder)")
        return value


class FailureSpec(Strict):
    max_failures: int = Field(2, ge=0, le=100, description="worker-group restarts per trial")
    checkpoints_to_keep: int = Field(2, ge=1, le=1000)

