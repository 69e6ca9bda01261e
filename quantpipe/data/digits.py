"""scikit-learn's bundled digits (8×8, values 0..16); no download involved."""

from __future__ import annotations

import numpy as np

from quantpipe.data.sources import Source, array_source


def load_digits_pools() -> dict[str, Source]:
    from sklearn.datasets import load_digits  # deferred: scikit-learn is slow to import

    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float32)
    labels = np.asarray(digits.target, dtype=np.int64)
    return {
        "all": array_source(images, labels, max_value=16.0, class_names=[str(i) for i in range(10)])
    }
