"""What every dataset reader shares: the error it raises and the arrays it returns."""

from __future__ import annotations

import numpy as np

# What each loader returns: train images, train labels, test images, test labels, num_classes.
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]


class DataError(ValueError):
    """Bad or missing data folder; str(err) is ONE line naming the path and what is wrong."""

    def __init__(self, message: str) -> None:
        # Reasons quoted from numpy/PIL/pickle can span lines; the CLI prints this as one line.
        super().__init__(" ".join(message.splitlines()))
