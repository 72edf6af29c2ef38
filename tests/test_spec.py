"""Valid specs: the shipped search spaces validate, ``--set`` lands where users expect, defaults fit
a 2-CPU laptop, searched values become the right trial configs, the digest tracks what matters,
and points survive the trip through Optuna (also on a union such as "0 or loguniform")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from jepa_sweeps.space import SearchSpace, trial_params
from jepa_sweeps.spec import SweepSpec, apply_overrides, load_spec, parse_spec
from tests.fake_datasets import write_cifar10, write_cifar100, write_stl10

FAKE = {"cifar10": write_cifar10, "cifar100": write_cifar100, "stl10": write_stl10}

SEARCH_SPACES = sorted((Path(__file__).parents[1] / "search_spaces").glob("*.yaml"))
UNION = {"choice": [0, {"loguniform": [0.001, 0.5]}]}


def spec(**fields: Any) -> SweepSpec:
    return parse_spec({"name": "t", **fields})


def ask(space: SearchSpace, point: dict[str, Any] | None = None) -> dict[str, Any]:
    """The spec-keyed values of one Optuna trial (``point`` enqueued first, as Ray does)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    if point is not None:
        study.enqueue_trial(space.optuna_params(point))
    trial = study.ask()
    space(trial)
    return trial_params(trial.params)


@pytest.mark.parametrize("path", SEARCH_SPACES, ids=lambda p: p.stem)
def test_search_spaces_validate(path: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(path.read_text()).get("trial", {}).get("data", {})
    # a cluster spec names its dataset folder there; here it is checked with a stand-in folder
    moved = []
    if data.get("path") and not Path(data["path"]).is_dir():
        moved = ["trial.data.path=" + str(FAKE[data["name"]](tmp_path / "data"))]
    loaded = load_spec(path, moved)
    loaded.trial_for({})
    space = SearchSpace(loaded)
    for point in loaded.points:
        params = ask(space, point)
        assert params == {**params, **point}
        loaded.trial_for(params)


def test_set_shortcut_reaches_the_trial(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: s\ntrial: {epochs: 5}\n")
    assert apply_overrides({"name": "s"}, ["epochs=3"]) == {"name": "s", "trial": {"epochs": 3}}
    loaded = load_spec(path, ["epochs=3", "resources.workers=1", "optim.batch_size=64", "search.seed={int: [0, 3]}"])
    cfg = loaded.trial_for({})
    assert (cfg.epochs, cfg.workers, cfg.optim.batch_size) == (3, 1, 64)
    assert loaded.resources.workers == 1 and loaded.searched["seed"].kind == "int"
    assert load_spec(path, ["trial.epochs=4"]).trial_for({}).epochs == 4


def test_name_alone_is_a_valid_spec_that_fits_two_cpus() -> None:
    only = spec()
    r = only.resources
    assert r.max_concurrent_trials * (r.workers * r.cpus_per_worker + r.driver_cpus) <= 2
    assert r.gpus_per_worker == 0
    cfg = only.trial_for({})
    assert cfg.workers == r.workers == 2 and cfg.data.name == "digits" and cfg.objective.name == "sigreg"
    assert (only.metric, only.mode, only.scheduler.name) == ("knn_acc", "max", "asha")
    assert only.n_startup_trials < only.num_samples


def test_trial_config_drops_lambda_for_ema_and_respects_when() -> None:
    s = spec(search={
        "objective.name": {"choice": ["sigreg", "ema", "vicreg"]},
        "objective.lam": {"loguniform": [0.01, 0.5], "when": ["sigreg", "vicreg"]},
        "objective.cov_weight": {"uniform": [0.01, 1.0], "when": "vicreg"},
    })
    ema = s.trial_for({"objective.name": "ema", "objective.lam": 0.1})
    assert ema.objective.name == "ema" and "lam" not in ema.objective_params
    assert s.trial_for({"objective.name": "sigreg", "objective.lam": 0.1}).objective_params["lam"] == 0.1
    space = SearchSpace(s)
    assert ask(space, {"objective.name": "ema"}) == {"objective.name": "ema"}
    assert set(ask(space, {"objective.name": "sigreg", "objective.lam": 0.2})) == {"objective.name", "objective.lam"}
    vicreg = ask(space, {"objective.name": "vicreg", "objective.lam": 0.2, "objective.cov_weight": 0.3})
    assert vicreg == {"objective.name": "vicreg", "objective.lam": 0.2, "objective.cov_weight": 0.3}
    assert s.trial_for(vicreg).objective_params == {"lam": 0.2, "cov_weight": 0.3}


def test_fixed_search_values_and_base_objective() -> None:
    s = spec(trial={"objective": {"name": "ema"}}, search={"epochs": 4, "optim.lr": {"loguniform": [1e-4, 1e-2]}})
    cfg = s.trial_for({"optim.lr": 1e-3})
    assert (cfg.epochs, cfg.optim.lr, cfg.objective.name) == (4, 1e-3, "ema")
    assert list(s.searched) == ["optim.lr"]


def test_digest_tracks_results_not_locations() -> None:
    raw = yaml.safe_load("""
        name: d
        trial: {epochs: 3}
        search: {objective.lam: {loguniform: [0.01, 0.5]}}
        points: [{objective.lam: 0.05}]
    """)
    digest = parse_spec(raw).digest()
    assert parse_spec(yaml.safe_load(yaml.safe_dump(raw))).digest() == digest
    same = [
        {"mlflow": {"tracking_uri": "http://127.0.0.1:5000", "experiment": "other"}},
        {"storage": "/somewhere/else"},
        {"description": "notes"},
    ]
    for change in same:
        assert parse_spec({**raw, **change}).digest() == digest, change
    different = [
        {"search": {"objective.lam": {"loguniform": [0.01, 0.4]}}},
        {"points": [{"objective.lam": 0.1}]},
        {"trial": {"epochs": 4}},
        {"num_samples": 9},
    ]
    for change in different:
        assert parse_spec({**raw, **change}).digest() != digest, change


@pytest.mark.parametrize("lam", [0, 0.001, 0.05, 0.5])
def test_points_on_a_union_come_back_from_optuna(lam: float) -> None:
    s = spec(search={"objective.lam": UNION}, points=[{"objective.lam": lam}])
    space = SearchSpace(s)
    params = space.optuna_params({"objective.lam": lam})
    assert params["objective.lam|branch"] == (0 if lam == 0 else "loguniform[0.001, 0.5]")
    assert ask(space, {"objective.lam": lam}) == {"objective.lam": lam}
    assert s.trial_for({"objective.lam": lam}).objective_params["lam"] == lam


def test_union_is_sampled_within_its_branches() -> None:
    space = SearchSpace(spec(search={"objective.lam": UNION}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        space(trial)
        lam = trial_params(trial.params)["objective.lam"]
        assert lam == 0 or 0.001 <= lam <= 0.5
        seen.add(lam == 0)
        study.tell(trial, 0.0)
    assert seen == {True, False}


def test_local_storage_is_refused_on_a_multi_host_cluster(tmp_path) -> None:
    """A real multi-host cluster cannot run here; the decision itself is checked per host count."""
    from jepa_sweeps.config import ConfigError
    from jepa_sweeps.run import filesystem_type, refuse_local_storage

    refuse_local_storage(str(tmp_path), hosts=1)
    refuse_local_storage("s3://bucket/jepa", hosts=3)
    assert filesystem_type(str(tmp_path)) != "unknown"
    with pytest.raises(ConfigError, match="storage=.*spans 3 hosts"):
        refuse_local_storage(str(tmp_path), hosts=3)
