"""The search distributions of a sweep spec's ``search`` section: what a searched parameter may
take, checked before anything runs (``jepa_sweeps.space`` turns them into Optuna suggestions)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import model_validator

from jepa_sweeps.config import Strict
from jepa_sweeps.redaction import shorten

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
MAX_OPTIONS = 1000  # each is validated as a trial config


class Distribution(Strict):
    """One searched parameter: ``{loguniform: [lo, hi]}``, ``{uniform: ...}``, ``{int: ...}``,
    ``{choice: [...]}`` (items may themselves be distributions: "0 or loguniform[1e-3, 0.5]"),
    optionally ``when: <objective name(s)>``."""

    kind: Literal["uniform", "loguniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    options: tuple[Any, ...] = ()
    when: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if not isinstance(value, dict) or "kind" in value:
            return value
        value = dict(value)
        when = value.pop("when", [])
        if not isinstance(when, (str, list)):
            raise ValueError(f"when={when!r}: expected an objective name or a list of them")
        when = (when,) if isinstance(when, str) else tuple(when)
        kinds = [k for k in value if k in DISTRIBUTIONS]
        if len(kinds) != 1:
            raise ValueError(
                f"expected exactly one of {', '.join(DISTRIBUTIONS)} (and optionally when), got {list(value)}"
            )
        if len(value) != 1:
            raise ValueError(f"unknown key {next(k for k in value if k != kinds[0])!r} beside {kinds[0]}")
        kind = kinds[0]
        arg = value[kind]
        if kind == "choice":
            if not isinstance(arg, list) or not arg:
                raise ValueError(f"choice needs a non-empty list, got {shorten(repr(arg))}")
            if len(arg) > MAX_OPTIONS:
                raise ValueError(f"choice of {len(arg)} options: at most {MAX_OPTIONS}")
            options = tuple(Distribution.model_validate(o) if isinstance(o, dict) else o for o in arg)
            return {"kind": kind, "options": options, "when": when}
        if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(a, (int, float)) for a in arg)):
            raise ValueError(f"{kind} needs [low, high], got {arg!r}")
        return {"kind": kind, "low": arg[0], "high": arg[1], "when": when}

    @model_validator(mode="after")
    def _bounds(self) -> Distribution:
        if self.kind == "choice" and not self.options:
            raise ValueError("choice needs a non-empty list of options")
        if self.kind != "choice":
            if self.low is None or self.high is None:
                raise ValueError(f"{self.kind} needs [low, high]")
            if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
                raise ValueError(f"{self.kind}[{self.low}, {self.high}]: low must be below high")
            if self.kind == "loguniform" and self.low <= 0:
                raise ValueError(f"loguniform[{self.low}, {self.high}]: bounds must be positive")
            if self.kind == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
                raise ValueError(f"int[{self.low}, {self.high}]: bounds must be integers")
        for option in self.options:
            if isinstance(option, Distribution) and option.kind == "choice":
                raise ValueError("a choice inside a choice: list its options in one choice")
            if isinstance(option, Distribution) and option.when:
                raise ValueError("when inside a choice option: put it beside the choice")
            if isinstance(option, (dict, list)):
                raise ValueError(f"choice option {option!r} is neither a value nor a distribution")
        return self

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return any(o.contains(value) if isinstance(o, Distribution) else o == value for o in self.options)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return self.low <= value <= self.high and (self.kind != "int" or float(value).is_integer())

    def values(self) -> list[Any]:
        """The values the parameter can take, as far as finite (for validating every one)."""
        if self.kind == "choice":
            return [v for o in self.options for v in (o.values() if isinstance(o, Distribution) else [o])]
        return [int(self.low) if self.kind == "int" else self.low, int(self.high) if self.kind == "int" else self.high]

    def label(self) -> str:
        return f"{self.kind}[{self.low:g}, {self.high:g}]"

    def text(self) -> str:
        """Human form for the plan, e.g. ``0 or loguniform[0.001, 0.5] (when <objective>)``."""
        if self.kind == "choice":
            parts = [o.label() if isinstance(o, Distribution) else repr(o) for o in self.options]
            body = " or ".join(parts) if any(isinstance(o, Distribution) for o in self.options) else f"one of {', '.join(parts)}"
        else:
            body = self.label()
        return body + (f" (when {', '.join(self.when)})" if self.when else "")

