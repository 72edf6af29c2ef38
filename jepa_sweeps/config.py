"""Validated configuration: the trial config (one training run) and, in ``spec.py``, the sweep.

Everything a trial does is a function of a ``TrialConfig``. Unknown keys are rejected at every
level; errors are turned into short messages naming the key and the offending value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, create_model, model_validator

from jepa_sweeps.objectives import DEFAULT_OBJECTIVE, REGISTRY
from jepa_sweeps.redaction import shorten

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
UnitRange = tuple[Annotated[float, Field(gt=0.0, le=1.0)], Annotated[float, Field(gt=0.0, le=1.0)]]


def _numeric(annotation: Any) -> bool:
    """Whether a field takes numbers and not booleans (``int``, ``float | None``, tuples of them)."""
    args = get_args(annotation)
    if annotation is bool or bool in args:
        return False
    if annotation in (int, float):
        return True
    return get_origin(annotation) is not Literal and any(_numeric(a) for a in args)


class Numbers(BaseModel):
    """Numbers are numbers: YAML's ``true`` is not 1, ``.inf``/``.nan`` are no setting's value
    (pydantic accepts both by default; each failed only after a sweep had started)."""

    model_config = ConfigDict(allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, info in cls.model_fields.items():
                value = data.get(name)
                items = value if isinstance(value, (list, tuple)) else [value]
                if any(isinstance(v, bool) for v in items) and _numeric(info.annotation):
                    raise BadValue(name, value, "a boolean where a number is expected")
        return data


class Strict(Numbers):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BadValue(ValueError):
    """Raised by validators about one key, so that ``describe`` can name it by its full path as
    written in the spec: ``key`` is relative to the model validated, or "" in a field validator."""

    def __init__(self, key: str, value: Any, problem: str):
        super().__init__(f"{key}={value!r}: {problem}")
        self.key, self.value, self.problem = key, value, problem


NATIVE_SIZE = {"digits": 8, "cifar10": 32, "cifar100": 32, "stl10": 96}


class DataConfig(Strict):
    name: Literal["digits", "cifar10", "cifar100", "stl10", "imagefolder"] = "digits"
    path: str | None = Field(None, description="dataset folder; not used by digits")
    image_size: int | None = Field(None, ge=4, le=1024, description="resize at load (imagefolder: 64)")
    labels: Literal["auto", "none"] = Field(
        "auto", description="none: ignore labels (label-free scores only; no kNN or linear probe)"
    )

    @model_validator(mode="after")
    def _path_exists(self, info: ValidationInfo) -> DataConfig:
        """Checked unless the context says ``check_paths: False``: the sweep driver describes trials
        whose folder may have gone since they ran."""
        if self.name != "digits":
            if self.path is None:
                raise BadValue("path", None, f"required for dataset {self.name!r}")
            if not (info.context or {}).get("check_paths", True):
                return self
            try:
                folder = Path(self.path).expanduser()
                found = folder.is_dir()
            except RuntimeError:  # "~user" of an unknown user
                found = False
            if not found:
                raise BadValue("path", self.path, "no such folder")
            if not folder.is_absolute():
                raise BadValue("path", self.path, "relative: trials run in another working directory")
            from jepa_sweeps.data.base import DataError
            from jepa_sweeps.data.datasets import check_folder

            try:
                check_folder(self.name, folder)
            except (DataError, OSError) as err:
                raise BadValue("path", self.path, str(err).removeprefix(f"{self.name}: ")) from None
        return self

    @property
    def size(self) -> int:
        return self.image_size or NATIVE_SIZE.get(self.name, 64)


class ViewsConfig(Strict):
    n_global: int = Field(2, ge=1, le=32, description="V_g")
    n_local: int = Field(6, ge=0, le=64, description="V_l")
    global_size: int | None = Field(None, ge=1, description="default: the image size")
    local_size: int | None = Field(None, ge=1, description="default: half the global size")
    global_scale: UnitRange = (0.3, 1.0)
    local_scale: UnitRange = (0.05, 0.3)
    ratio: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (3 / 4, 4 / 3)
    flip_p: Probability = 0.5
    jitter_p: Probability = 0.8
    brightness: Annotated[float, Field(ge=0.0, le=1.0)] = 0.4
    contrast: Annotated[float, Field(ge=0.0, le=1.0)] = 0.4
    saturation: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    hue: Annotated[float, Field(ge=0.0, le=0.5)] = 0.1
    grayscale_p: Probability = 0.2
    blur_p: Probability = 0.5
    blur_sigma: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (0.1, 2.0)
    solarize_p: Probability = 0.2

    @model_validator(mode="after")
    def _ranges(self) -> ViewsConfig:
        for key in ("global_scale", "local_scale", "ratio", "blur_sigma"):
            lo, hi = getattr(self, key)
            if lo > hi:
                raise BadValue(key, [lo, hi], "lower bound above upper bound")
        return self


class CNNConfig(Strict):
    name: Literal["cnn"] = "cnn"
    width: int = Field(32, ge=1, le=1024)


class ResNetConfig(Strict):
    name: Literal["resnet18"]


class ViTConfig(Strict):
    name: Literal["vit"]
    preset: Literal["tiny", "small", "nano"] = "tiny"
    patch_size: int | None = Field(None, ge=1, le=64)
    dim: int | None = Field(None, ge=8, le=4096)
    depth: int | None = Field(None, ge=1, le=64)
    heads: int | None = Field(None, ge=1, le=64)
    mlp_ratio: float | None = Field(None, gt=0, le=16)

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(exclude={"name"}).items() if v is not None}

    @property
    def patch(self) -> int:
        from jepa_sweeps.models.vit import PRESETS

        return self.patch_size or PRESETS[self.preset]["patch_size"]

    @model_validator(mode="after")
    def _heads(self) -> ViTConfig:
        from jepa_sweeps.models.vit import PRESETS

        dim, heads = self.dim or PRESETS[self.preset]["dim"], self.heads or PRESETS[self.preset]["heads"]
        if dim % heads or (dim // heads) % 4:
            raise BadValue("dim", dim, f"must split into {heads} heads of a size divisible by 4 (2D RoPE)")
        return self


EncoderConfig = Annotated[Union[CNNConfig, ResNetConfig, ViTConfig], Field(discriminator="name")]


def _objective_models() -> tuple[type[BaseModel], ...]:
    """One config model per registered objective: its params plus a ``name`` tag."""
    return tuple(
        create_model(
            f"{name.capitalize()}Objective",
            __base__=(Numbers, cls.Params),
            name=(Literal[name], ...),  # type: ignore[valid-type]
        )
        for name, cls in sorted(REGISTRY.items())
    )


ObjectiveConfig = Annotated[Union[_objective_models()], Field(discriminator="name")]  # type: ignore[valid-type]


class ProjectorConfig(Strict):
    hidden_dim: int = Field(512, ge=1, le=65536)
    out_dim: int = Field(64, ge=1, le=65536)
    num_layers: int = Field(3, ge=1, le=8)


class OptimConfig(Strict):
    batch_size: int = Field(128, ge=2, le=1 << 20, description="global batch of one step")
    lr: float = Field(5e-4, gt=0.0, le=10.0, description="learning rate at batch 256")
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    weight_decay: float = Field(0.05, ge=0.0, le=10.0)
    warmup_epochs: float = Field(1.0, ge=0.0)
    min_lr_ratio: float = Field(0.01, ge=0.0, le=1.0, description="final lr / peak lr (cosine)")
    probe_lr: float = Field(1e-2, gt=0.0, le=10.0, description="online linear probe (fixed lr)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast of the step; auto: bf16 on CUDA, fp32 on CPU (see jepa_sweeps/precision.py)"
    )

    def scaled_lr(self) -> float:
        ratio = self.batch_size / 256
        return self.lr * {"linear": ratio, "sqrt": ratio**0.5, "none": 1.0}[self.lr_scaling]


class EvalConfig(Strict):
    every: int = Field(1, ge=1, description="evaluate every k epochs (and at the last)")
    knn_k: int = Field(20, ge=1, le=1000)
    knn_temperature: float = Field(0.07, gt=0.0, le=10.0)
    val_batches: int = Field(2, ge=1, le=1000, description="held-out batches for val losses")
    final_probe_epochs: int = Field(100, ge=0, le=10000, description="0 disables the offline probe")
    attention_images: int = Field(16, ge=1, le=1024, description="ViTs: fixed test images for attention statistics")
    attention_threshold: float = Field(0.01, gt=0.0, lt=1.0, description="sparsity: CLS→patch weights below this")
    extrapolate: bool = Field(True, description="ViTs: also evaluate at 2× the training resolution")
    plots_every: int = Field(0, ge=0, description="diagnostic PNGs every k epochs too (0: only at the last)")
    selection_alpha: float = Field(0.4, ge=0.0, le=4.0, description="α of the label-free score sel_loss / λ^α")


# Augmentation defaults for 8×8 digits, where the natural-image defaults destroy the content:
# a 5% crop of 64 pixels is one pixel, a mirrored digit is another digit, and blur or solarize
# leave little of the strokes. Explicit values in a config still win.
DIGITS_VIEWS = {
    "global_scale": (0.5, 1.0),
    "local_scale": (0.25, 0.6),
    "local_size": 6,
    "flip_p": 0.0,
    "blur_p": 0.0,
    "solarize_p": 0.0,
}


class TrialConfig(Strict):
    """One training run: everything the per-worker loop needs, nothing about Ray or MLflow."""

    seed: int = Field(0, ge=0, le=2**31 - 1)
    epochs: int = Field(20, ge=1, le=100000)
    workers: int = Field(1, ge=1, le=4096, description="DDP world size")
    threads: int | None = Field(None, ge=1, le=256, description="torch threads per worker")
    checkpoint_every: int = Field(1, ge=1)
    compile: bool = Field(False, description="torch.compile the encoder (eager if compiling fails)")
    data: DataConfig = DataConfig()
    views: ViewsConfig = ViewsConfig()
    encoder: EncoderConfig = CNNConfig()
    projector: ProjectorConfig = ProjectorConfig()
    objective: ObjectiveConfig = Field(default_factory=lambda: {"name": DEFAULT_OBJECTIVE}, validate_default=True)  # type: ignore[assignment]
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="before")
    @classmethod
    def _dataset_view_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        dataset = data.get("data")
        name = dataset.get("name", "digits") if isinstance(dataset, dict) else getattr(dataset, "name", "digits")
        views = data.get("views", {})
        if name != "digits" or not isinstance(views, dict):
            return data
        return {**data, "views": {**DIGITS_VIEWS, **views}}

    @model_validator(mode="after")
    def _consistent(self) -> TrialConfig:
        b, w = self.optim.batch_size, self.workers
        if b % w or b // w < 2:
            raise BadValue("optim.batch_size", b, f"must be a multiple of the {w} DDP worker(s), ≥ 2 images each")
        image, g, l = self.data.size, self.global_size, self.local_size
        if g > image:
            raise BadValue("views.global_size", g, f"larger than the {image}px images of {self.data.name}")
        if l > g:
            raise BadValue("views.local_size", l, f"larger than views.global_size={g}")
        if isinstance(self.encoder, ViTConfig):
            p = self.encoder.patch
            for key, size in (("global_size", g), ("local_size", l)):
                if size % p and (key == "global_size" or self.views.n_local):
                    raise BadValue(f"views.{key}", size, f"not divisible by the ViT patch size {p}")
        refusal = REGISTRY[self.objective.name].refuse(self)
        if refusal is not None:
            raise BadValue(*refusal)
        return self

    @property
    def global_size(self) -> int:
        return self.views.global_size or self.data.size

    @property
    def local_size(self) -> int:
        if self.views.local_size:
            return self.views.local_size
        size = max(self.global_size // 2, 1)
        if isinstance(self.encoder, ViTConfig):
            size = max(size - size % self.encoder.patch, self.encoder.patch)
        return size

    @property
    def objective_params(self) -> dict[str, Any]:
        return self.objective.model_dump(exclude={"name"})


class ConfigError(ValueError):
    """A user-facing validation error: short, naming the key and value."""


def join_key(*parts: Any) -> str:
    """Dotted key path as written in a spec: list indices as ``[i]``, pydantic's union tags
    (``objective.<name>.lam`` → ``objective.lam``) and validator names dropped."""
    out = ""
    previous: Any = None
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part and not part.startswith("function-") and not (
            previous in ("objective", "encoder") and (part in REGISTRY or part in ("cnn", "resnet18", "vit"))
        ):
            out = f"{out}.{part}" if out else part
        previous = part
    return out


def _short(value: Any) -> str:
    """``repr`` cut to one readable length: a message must not drown in a pasted value."""
    return shorten(repr(value), 80)


def _line(e: dict[str, Any], prefix: str) -> str:
    """One pydantic error as ``key=value: problem``."""
    loc, kind, value = e["loc"], e["type"], e.get("input")
    key = shorten(join_key(prefix, *loc), 120)
    error = (e.get("ctx") or {}).get("error")
    if isinstance(error, BadValue):
        return f"{join_key(key, *error.key.split('.'))}={_short(error.value)}: {error.problem}"
    if kind == "value_error":  # a validator that names its keys relative to the top
        msg = e["msg"].removeprefix("Value error, ")
        return msg if msg.startswith(key) else f"{key}: {msg}"
    if kind == "extra_forbidden":
        owner = next((b for a, b in zip(loc, loc[1:]) if a == "objective" and b in REGISTRY), None)
        problem = REGISTRY[owner].unknown_parameter(str(loc[-1])) if owner else "unknown key"
        return f"{key}={_short(value)}: {problem}"
    if kind == "union_tag_invalid":
        tags = e["ctx"]["expected_tags"].replace("'", "")
        return f"{key}.name={_short(value.get('name'))}: unknown; choose among {tags}"
    if kind == "union_tag_not_found":
        return f"{key}.name: missing (it selects the kind of {key.rsplit('.', 1)[-1]})"
    if kind == "invalid_key" or loc[-1:] == ("[key]",):  # a non-string key of a mapping
        mapping = join_key(prefix, *loc[: -1 if kind == "invalid_key" else -2]) or "(top level)"
        return f"{mapping}: key {_short(value)} is not a string"
    if kind == "literal_error":
        expected = e["ctx"]["expected"].replace("'", "").replace(" or ", ", ")
        return f"{key}={_short(value)}: unknown; choose among {expected}"
    if kind == "missing":
        return f"{key}: missing (required)"
    shown = "" if isinstance(value, dict) else f"={_short(value)}"
    return f"{key or '(top level)'}{shown}: {e['msg'].removeprefix('Input ')}"


def describe(err: ValidationError, prefix: str = "", limit: int = 3) -> str:
    """At most ``limit`` lines, each ``key=value: problem``, keys prefixed with ``prefix``."""
    lines = [line for e in err.errors() for line in _line(e, prefix).splitlines()]
    return "\n".join(lines[:limit])


def trial_config(data: dict[str, Any]) -> TrialConfig:
    """Validate a trial config dict, raising ``ConfigError`` with a short message."""
    try:
        return TrialConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe(err)) from None
