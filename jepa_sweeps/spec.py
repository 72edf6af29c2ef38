"""The sweep spec: YAML → validated ``SweepSpec`` (pydantic), with ``--set key=value`` overrides.

A spec is the base trial config plus what varies (``search``), what is evaluated first
(``points``), what is optimised (``metric``/``mode``), how trials are scheduled and where results
go. Every field has a default, so a spec can be a few lines. Errors are ``ConfigError``s of at
most three lines naming the key and value; nothing is started or written before validation.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from jepa_sweeps.config import BadValue, ConfigError, Strict, TrialConfig, describe
from jepa_sweeps.data.imagefolder import is_flat_folder
from jepa_sweeps.distributions import Distribution
from jepa_sweeps.evaluation.selection import MODES, NEEDS_LABELS
from jepa_sweeps.objectives import DEFAULT_OBJECTIVE, REGISTRY, has_param
from jepa_sweeps.precision import resolve
from jepa_sweeps.preflight import storage_location
from jepa_sweeps.redaction import shorten
from jepa_sweeps.spec_sections import BudgetSpec, FailureSpec, MLflowSpec, OptunaSpec, ResourcesSpec, SchedulerSpec
from jepa_sweeps.yaml_input import load_file, loads, non_finite


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class SweepSpec(Strict):
    name: str = Field(..., min_length=1, max_length=100)
    description: str = ""
    trial: dict[str, Any] = Field(default_factory=dict, description="the base trial config")
    search: dict[str, Distribution | Any] = Field(default_factory=dict)
    points: list[dict[str, Any]] = Field(default_factory=list)
    metric: str = "knn_acc"
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(8, ge=1, le=100000, description="configurations to try")
    seeds: int = Field(1, ge=1, le=100, description="runs per configuration (seed, seed+1, ...)")
    scheduler: SchedulerSpec = SchedulerSpec()
    optuna: OptunaSpec = OptunaSpec()
    resources: ResourcesSpec = ResourcesSpec()
    mlflow: MLflowSpec = MLflowSpec()
    storage: str | None = Field(None, description="Ray storage: absolute path or s3:// / gs:// URI")
    failures: FailureSpec = FailureSpec()
    budget: BudgetSpec | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        """Names become folder names (storage, artifacts): no way out of the storage folder."""
        if not NAME.fullmatch(value):
            raise BadValue("", value, "use letters, digits, '_', '.', '-' (starting with a letter or digit)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _finite(cls, data: Any) -> Any:
        """No infinity or NaN anywhere (search bounds, points, trial values): none is a setting."""
        found = non_finite(data)
        if found:
            raise BadValue(*found, "not a finite number")
        return data

    @field_validator("trial")
    @classmethod
    def _absolute_data_path(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Trials run in another working directory: a relative ``data.path`` is resolved here,
        against the directory the runner was started in."""
        path = get_path(value, "data.path")
        if isinstance(path, str) and path and "\0" not in path and "://" not in path:
            try:
                absolute = Path(path).expanduser().absolute()
            except RuntimeError:  # "~user" of an unknown user: DataConfig names it
                return value
            if str(absolute) != path:
                value = copy.deepcopy(value)
                set_path(value, "data.path", str(absolute))
        return value

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str | None) -> str | None:
        """Resolved before Ray starts: a path that cannot be (``~nobody``, NUL) is a spec error,
        ``file://`` becomes a path, and a URI holding credentials is refused: Ray writes the
        storage URI into the sweep's experiment state."""
        if value is None:
            return value
        path, problem = storage_location(value)
        if problem:
            raise BadValue("", value, problem)
        return path

    @field_validator("search", mode="before")
    @classmethod
    def _search(cls, value: Any) -> Any:
        """Parse distributions here so that their errors name the searched key."""
        if not isinstance(value, dict):
            return value
        out = {}
        for key, dist in value.items():
            try:
                out[key] = Distribution.model_validate(dist) if isinstance(dist, dict) else dist
            except ValidationError as err:
                raise ValueError(describe(err, prefix=f"search.{key}", limit=1)) from None
        return out

    @property
    def searched(self) -> dict[str, Distribution]:
        return {k: v for k, v in self.search.items() if isinstance(v, Distribution)}

    @property
    def n_startup_trials(self) -> int:
        if self.optuna.n_startup_trials is not None:
            return self.optuna.n_startup_trials
        return min(10, max(1, self.num_samples // 3))

    def base_trial(self) -> dict[str, Any]:
        """The base trial config with fixed search values applied and the world size set."""
        base = copy.deepcopy(self.trial)
        for key, value in self.search.items():
            if not isinstance(value, Distribution):
                set_path(base, key, value)
        base["workers"] = self.resources.workers
        optim = base.get("optim", {})
        if isinstance(optim, dict) and optim.get("precision", "auto") == "auto":
            # Resolved here, where the trial's device is known, so the plan and MLflow show it.
            device = "cuda" if self.resources.gpus_per_worker else "cpu"
            base["optim"] = {**optim, "precision": resolve("auto", device)}
        if isinstance(base.get("objective", {}), dict):
            base.setdefault("objective", {}).setdefault("name", DEFAULT_OBJECTIVE)
        return base

    def trial_for(self, params: dict[str, Any], check_paths: bool = True) -> TrialConfig:
        """The trial config for searched values ``params`` (dotted keys), validated."""
        cfg = self.base_trial()
        name = params.get("objective.name", get_path(cfg, "objective.name", DEFAULT_OBJECTIVE))
        for key, value in params.items():
            if key.startswith("objective.") and key != "objective.name" and not has_param(name, key.split(".", 1)[1]):
                continue  # a parameter of the other searched objectives
            set_path(cfg, key, value)
        if "objective.name" in params:
            cfg["objective"] = {k: v for k, v in cfg.get("objective", {}).items() if k == "name" or has_param(name, k)}
        return TrialConfig.model_validate(cfg, context={"check_paths": check_paths})

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        if "workers" in self.trial:
            raise BadValue("trial.workers", self.trial["workers"], "set resources.workers instead (the DDP world size)")
        if self.seeds > 1 and self.scheduler.name != "fifo":
            raise ValueError(f"seeds={self.seeds} needs scheduler.name='fifo' (ASHA would stop seeds of one group unevenly)")
        if self.n_startup_trials >= self.num_samples and self.searched:
            raise ValueError(
                f"optuna.n_startup_trials={self.n_startup_trials} is not below num_samples={self.num_samples}: TPE would never act"
            )
        if len(self.points) > self.num_samples:
            raise ValueError(f"points: {len(self.points)} points, more than num_samples={self.num_samples}")
        try:
            base = TrialConfig.model_validate(self.base_trial())
        except ValidationError as err:
            raise ValueError(describe(err, prefix="trial")) from None
        configs = self._check_search()
        self._check_label_free(base)
        self._check_metric([self.trial_for({}), *configs])
        return self

    def _check_label_free(self, base: TrialConfig) -> None:
        """Label-free scores have a fixed better direction; labelled metrics need labelled data."""
        if self.metric in MODES and self.mode != MODES[self.metric]:
            raise BadValue("mode", self.mode, f"{self.metric} is better {'higher' if MODES[self.metric] == 'max' else 'lower'}: "
                           f"set mode: {MODES[self.metric]}")
        data = base.data
        unlabelled = data.labels == "none" or (data.name == "imagefolder" and is_flat_folder(data.path))
        if unlabelled and self.metric in NEEDS_LABELS:
            raise BadValue("metric", self.metric, f"needs labels, and the data has none: use one of {', '.join(MODES)}")

    def _check_metric(self, configs: list[TrialConfig]) -> None:
        """The metric must be in every report of every trial (Tune, ASHA and Optuna read it per epoch)."""
        from jepa_sweeps.metrics import FINAL_METRICS, reported_metrics

        reported = frozenset.intersection(*(reported_metrics(c) for c in configs))
        if self.metric in reported:
            return
        if self.metric in FINAL_METRICS:
            raise BadValue("metric", self.metric, "reported after the last epoch only; the sweep needs it every epoch")
        main = sorted(m for m in reported if not re.search(r"_l\d+", m))
        shown = ", ".join(main) if len(", ".join(main)) < 200 else ", ".join(main)[:197] + "..."
        raise BadValue("metric", self.metric, f"not reported by every trial; choose among {shown}")

    def _objective_names(self) -> list[str]:
        dist = self.search.get("objective.name")
        if isinstance(dist, Distribution):
            names = dist.values()
            unknown = [n for n in names if n not in REGISTRY]
            if unknown or dist.kind != "choice":
                raise ValueError(
                    f"search.objective.name={unknown[0] if unknown else dist.label()!r}: unknown; "
                    f"choose among {', '.join(sorted(REGISTRY))}"
                )
            return names
        return [get_path(self.base_trial(), "objective.name", DEFAULT_OBJECTIVE)]

    def _check_search(self) -> list[TrialConfig]:
        """Checks searched keys and points; returns the trial configs of their extremes."""
        configs = []
        names = self._objective_names()
        base = self.base_trial()
        for key, dist in self.searched.items():
            if get_path(TrialConfig.model_validate(base).model_dump(), key, _MISSING) is _MISSING and not key.startswith("objective."):
                raise ValueError(f"search.{key}: no such trial config key")
            for name in dist.when:
                if name not in names:
                    raise ValueError(f"search.{key}.when={name!r}: not among the searched objectives {names}")
            if key.startswith("objective.") and key != "objective.name":
                param = key.split(".", 1)[1]
                holders = [n for n in (dist.when or names) if has_param(n, param)]
                if not holders or (dist.when and len(holders) != len(dist.when)):
                    wrong = next((n for n in (dist.when or names) if n not in holders), names[0])
                    raise ValueError(f"search.{key}: objective {wrong!r} has no parameter {param!r}")
            elif dist.when:
                raise ValueError(f"search.{key}.when: only objective parameters can be conditional")
        # Every extreme of every searched value must give a valid trial config.
        for key, dist in self.searched.items():
            for value in dist.values():
                params = {key: value}
                if key.startswith("objective.") and key != "objective.name":
                    holder = next(n for n in (dist.when or names) if has_param(n, key.split(".", 1)[1]))
                    params["objective.name"] = holder
                try:
                    configs.append(self.trial_for(params))
                except ValidationError as err:
                    raise ValueError(f"search.{key}={shorten(repr(value))}: {describe(err, prefix='trial', limit=1)}") from None
        for i, point in enumerate(self.points):
            for key, value in point.items():
                if key not in self.searched:
                    raise ValueError(f"points[{i}].{key}: not a searched parameter")
                if not self.searched[key].contains(value):
                    raise ValueError(f"points[{i}].{key}={value!r}: outside its search range")
            try:
                configs.append(self.trial_for(point))
            except ValidationError as err:
                raise ValueError(f"points[{i}]: {describe(err, prefix='trial', limit=1)}") from None
        return configs

    def digest(self) -> str:
        """Hash of what determines the results (not where they are written)."""
        body = self.model_dump(mode="json", exclude={"mlflow", "storage", "description"})
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


_MISSING = object()


def get_path(tree: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``key=value`` pairs (YAML values) onto the raw spec; keys of the trial config may omit
    the ``trial.`` prefix (``--set epochs=3``)."""
    top = set(SweepSpec.model_fields)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        try:
            value = loads(text, f"--set {key}")
        except ConfigError as err:
            raise ConfigError(f"--set {key}={shorten(repr(text))}: not a valid YAML value ({str(err).split(': ', 1)[-1]})") from None
        if key.split(".")[0] not in top:
            key = f"trial.{key}"
        if key.startswith("search."):
            if not isinstance(raw.setdefault("search", {}), dict):
                raise ConfigError(f"--set {item!r}: search is not a mapping in the spec")
            raw["search"][key.removeprefix("search.")] = value
        else:
            set_path(raw, key, value)
    return raw


def parse_spec(raw: Any, source: str = "spec") -> SweepSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(describe(err)) from None


def load_spec(path: str | Path, overrides: list[str] = ()) -> SweepSpec:
    """Read, override and validate a spec file; the only entry point the CLI needs."""
    raw = load_file(path)
    if raw is None:
        raise ConfigError(f"{path}: empty spec (at least 'name' is needed)")
    if isinstance(raw, dict):
        raw = apply_overrides(raw, list(overrides))
    return parse_spec(raw, str(path))
