"""featstore: a disk-backed feature store with incremental, content-hashed caching.

    import featstore
    featstore.build("1k", ["stats", "svd"])
    fs = featstore.open("1k")
    X = fs.load("layer_017", "svd", split="train")   # torch.Tensor (n_rows, 16)
    y = fs.labels("train")
"""

__version__ = "0.1.0"

from featstore.api import DEFAULT_FEATURIZERS, FeatureSet, build, open  # noqa: E402,A004
from featstore.columns import read_column  # noqa: E402
from featstore.errors import (  # noqa: E402
    ColumnError,
    DatasetError,
    FeatstoreError,
    NotFoundError,
    SpecError,
    StoreError,
)

__all__ = [
    "DEFAULT_FEATURIZERS",
    "FeatureSet",
    "build",
    "open",
    "read_column",
    "FeatstoreError",
    "ColumnError",
    "DatasetError",
    "NotFoundError",
    "SpecError",
    "StoreError",
]
