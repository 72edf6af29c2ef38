"""The sweep's one helper actor: it carries each trial's reports from its Train controller to its
trial driver, and ends what a trial leaves running when Tune ends the trial.

Reports: one slot per trial attempt holds one report, so training runs at most one report ahead of
Tune, and the trial driver's blocking ``get`` costs nothing while it waits (Ray's
``TuneReportCallback`` polls a queue actor five times a second; on 2 cores that polling alone took
~1 % of the CPU from the training workers, benchmarks row 1).

Ending: Ray ties a placement group to the job, not to the controller actor that created it, so a
trial ASHA stops would keep its workers' resources until the sweep ends; and a trial driver Tune
reuses for the next trial (``reuse_actors``) is not killed, so neither is its controller. Train's
remedy for the first is a detached cleaner actor per run polling whether its controller died; here
the sweep driver says when a trial ended (``EndTrials``), and the mailbox kills the trial's
controllers and removes its placement groups. One actor for the whole sweep replaces the queue
actor and the cleaner each trial started (two Ray processes per trial, ≈3 CPU-seconds here).
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from ray import tune
from ray.actor import ActorHandle
from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback
from ray.util.placement_group import PlacementGroup, remove_placement_group

MAILBOX = "jepa_sweeps.mailbox"  # trial drivers and a restored ``EndTrials`` find it by name
_owned: dict[str, ActorHandle] = {}  # this driver's handle per Ray cluster: an actor ends with its last handle


class Mailbox:
    def __init__(self) -> None:
        self.slots: dict[str, asyncio.Queue] = {}
        self.held: dict[str, list[ActorHandle | PlacementGroup]] = {}
        self.ended: set[str] = set()

    def slot(self, key: str) -> asyncio.Queue:
        return self.slots.setdefault(key, asyncio.Queue(maxsize=1))

    async def put(self, key: str, item: dict[str, Any] | None) -> None:
        await self.slot(key).put(item)

    async def get(self, key: str) -> dict[str, Any] | None:
        return await self.slot(key).get()

    def hold(self, trial_id: str, resource: ActorHandle | PlacementGroup) -> None:
        """Keep a trial's controller or placement group, to end with the trial."""
        if trial_id in self.ended:  # a controller still restarting workers as its trial was stopped
            release(resource)
        else:
            self.held.setdefault(trial_id, []).append(resource)

    def end(self, trial_id: str) -> bool:
        """The trial ended (finished, stopped or failed): kill its controllers, remove its placement
        groups (no-ops for what Train already ended), and wake its driver if it waits for a report.
        True when it had ended before (Tune stopped it while its driver still ran)."""
        before = trial_id in self.ended
        self.ended.add(trial_id)
        for resource in sorted(self.held.pop(trial_id, []), key=lambda r: isinstance(r, PlacementGroup)):
            release(resource)
        for key in [k for k in self.slots if k.startswith(f"{trial_id}/")]:
            if not self.slots[key].full():
                self.slots[key].put_nowait(None)
        return before


def release(resource: ActorHandle | PlacementGroup) -> None:
    if isinstance(resource, PlacementGroup):
        remove_placement_group(resource)
    else:
        ray.kill(resource, no_restart=True)


def mailbox() -> ActorHandle:
    """The sweep's ``Mailbox`` (in the job's namespace), started by the sweep driver and kept as long
    as the driver runs."""
    cluster = ray.get_runtime_context().gcs_address
    if cluster not in _owned:
        _owned[cluster] = ray.remote(num_cpus=0)(Mailbox).options(name=MAILBOX, get_if_exists=True).remote()
    return _owned[cluster]


class EndTrials(tune.Callback):
    """Tells the sweep's ``Mailbox`` when Tune ended a trial (in the sweep driver)."""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        mailbox().end.remote(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        mailbox().end.remote(trial.trial_id)


class HoldRun(ControllerCallback, WorkerGroupCallback):
    """In a trial's Train controller: hands the controller and each worker group's placement group
    to the sweep's ``Mailbox``."""

    def __init__(self, box: ActorHandle, trial_id: str) -> None:
        self.box, self.trial_id = box, trial_id

    def after_controller_start(self, train_run_context: Any) -> None:
        ray.get(self.box.hold.remote(self.trial_id, ray.get_runtime_context().current_actor))

    def after_worker_group_start(self, worker_group: Any) -> None:
        group = worker_group.get_worker_group_state().placement_group_handle.placement_group
        ray.get(self.box.hold.remote(self.trial_id, group))
