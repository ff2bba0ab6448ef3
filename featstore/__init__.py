"""featstore: a disk-backed feature store with incremental, content-hashed caching.

    import featstore
    featstore.build("1k", ["stats", "svd"])
    fs = featstore.open("1k")
    X = fs.load("layer_017", "svd", split="train")   # torch.Tensor (n_rows, 16)
    y = fs.labels("train")
"""

__version__ = "0.1.0"

from featstore.api import (
    DEFAULT_FEATURIZERS,
    FeatureSet,
    build,
    forget,
    gc,
    lock,
    open,
    status,
    status_against_lock,
    verify,
)
from featstore.columns import read_column
from featstore.errors import (
    ColumnError,
    DatasetError,
    FeatstoreError,
    FeaturizerError,
    NotFoundError,
    SpecError,
    StaleError,
    StoreError,
)
from featstore.featurizers import featurizer

__all__ = [
    "DEFAULT_FEATURIZERS",
    "ColumnError",
    "DatasetError",
    "FeatstoreError",
    "FeatureSet",
    "FeaturizerError",
    "NotFoundError",
    "SpecError",
    "StaleError",
    "StoreError",
    "build",
    "featurizer",
    "forget",
    "gc",
    "lock",
    "open",
    "read_column",
    "status",
    "status_against_lock",
    "verify",
]
