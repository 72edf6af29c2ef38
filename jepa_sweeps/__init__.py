"""jepa_sweeps: hyperparameter and ablation sweeps for joint-embedding SSL (LeJEPA)."""

__version__ = "0.1.0"
