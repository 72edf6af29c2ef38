"""The model a trial trains: backbone → projector → objective, plus the online probe, built from a
trial config."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jepa_sweeps.config import TrialConfig, ViTConfig
from jepa_sweeps.data.datasets import ImageDataset
from jepa_sweeps.models import build_encoder
from jepa_sweeps.models.projector import Projector
from jepa_sweeps.objectives import Objective, build


class LeJEPA(nn.Module):
    """Backbone → projector → objective, plus the online linear probe on detached features
    (none for unlabelled data: ``num_classes`` 0).

    One module, so DDP wraps a single forward and averages every gradient (probe and the
    objective's own layers included), and one ``state_dict`` holds the objective's state.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module, objective: Objective, num_classes: int):
        super().__init__()
        self.backbone, self.projector, self.objective = backbone, projector, objective
        d = backbone.embed_dim
        self.probe = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, num_classes)) if num_classes else None
        objective.setup(backbone, projector)

    def embed_views(self, groups: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features (V, N, D) and projections (V, N, K) of view groups (V_i, N, C, S_i, S_i)."""
        dtype = next(self.projector.parameters()).dtype  # views are float32; the model may run in float64 (tests)
        feats = [self.backbone(g.to(dtype).flatten(0, 1)).unflatten(0, g.shape[:2]) for g in groups]
        h = torch.cat(feats)
        return h, self.projector(h.flatten(0, 1)).unflatten(0, h.shape[:2])

    def losses(self, groups: list[torch.Tensor], step: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Features, projections and the objective's terms; the first group holds the global views."""
        target = self.objective.targets(groups[0])
        h, z = self.embed_views(groups)
        return h, z, self.objective(z, n_global=groups[0].shape[0], step=step, target=target)

    def forward(self, groups: list[torch.Tensor], labels: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        n_global = groups[0].shape[0]
        h, z, out = self.losses(groups, step)
        out["total"] = out["loss"]
        if self.probe is not None:
            logits = self.probe(h[:n_global].detach().flatten(0, 1))
            out["probe_loss"] = F.cross_entropy(logits, labels.repeat(n_global))
            out["total"] = out["total"] + out["probe_loss"]
        out["z_std"] = z.detach().std(dim=1).mean()
        return out


def build_model(cfg: TrialConfig, data: ImageDataset) -> LeJEPA:
    torch.manual_seed(cfg.seed)
    params = cfg.encoder.params() if isinstance(cfg.encoder, ViTConfig) else cfg.encoder.model_dump(exclude={"name"})
    backbone = build_encoder(cfg.encoder.name, data.channels, **params)
    p = cfg.projector
    projector = Projector(backbone.embed_dim, p.hidden_dim, p.out_dim, p.num_layers)
    objective = build(cfg.objective.name, embed_dim=p.out_dim, **cfg.objective_params)
    return LeJEPA(backbone, projector, objective, data.num_classes)
