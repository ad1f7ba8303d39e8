"""asg.data: datasets, samplers, a prefetching DataLoader, transforms, dataset-format readers,
bundled real data, text tokenizers and metrics. numpy is the only hard dependency; importing this
package never imports GPU or viewer code.

>>> import asg.data
>>> asg.data.__version__
'0.2.0'
"""

from __future__ import annotations

__version__ = "0.2.0"
__all__: list[str] = ["__version__"]

# --- data pipeline: datasets, samplers, loader, transforms, formats, bundled data (pipeline owner) ---
from .builtin import load_cifar10, load_cifar100, load_fashion_mnist, load_mnist
from .bundled import SHAKESPEARE_PLAYS, load_digits, load_shakespeare
from .collate import default_collate
from .datasets import (
    ConcatDataset,
    Dataset,
    InMemoryDataset,
    MapDataset,
    SubsetDataset,
    random_split,
    train_test_split,
)
from .distributed import DistributedSampler
from .errors import DataFormatError, DatasetNotFoundError
from .formats import ImageFolder, read_cifar_binary, read_idx, write_cifar_binary, write_idx
from .loader import DataLoader, WorkerError
from .samplers import BatchSampler, RandomSampler, Sampler, SequentialSampler, WeightedRandomSampler
from .transforms import (
    Clip,
    Compose,
    Flatten,
    Lambda,
    Log,
    MinMaxScale,
    Normalize,
    OneHot,
    RandomCrop,
    RandomHorizontalFlip,
    RandomNoise,
    ToFloat,
    Transform,
)

__all__ += [
    "SHAKESPEARE_PLAYS",
    "BatchSampler",
    "Clip",
    "Compose",
    "ConcatDataset",
    "DataFormatError",
    "DataLoader",
    "Dataset",
    "DatasetNotFoundError",
    "DistributedSampler",
    "Flatten",
    "ImageFolder",
    "InMemoryDataset",
    "Lambda",
    "Log",
    "MapDataset",
    "MinMaxScale",
    "Normalize",
    "OneHot",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomNoise",
    "RandomSampler",
    "Sampler",
    "SequentialSampler",
    "SubsetDataset",
    "ToFloat",
    "Transform",
    "WeightedRandomSampler",
    "WorkerError",
    "default_collate",
    "load_cifar10",
    "load_cifar100",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_shakespeare",
    "random_split",
    "read_cifar_binary",
    "read_idx",
    "train_test_split",
    "write_cifar_binary",
    "write_idx",
]  # fmt: skip

# --- text (tokenizers, LM dataset) and metrics (text/metrics owner): append below this line ---
# Add e.g. `from .text import CharTokenizer` and then `__all__ += ["CharTokenizer"]`.
from .metrics import (  # noqa: E402
    EMA,
    F1,
    MAE,
    MAPE,
    MSE,
    R2,
    RMSE,
    Accuracy,
    ConfusionMatrix,
    EarlyStopping,
    ExplainedVariance,
    MaxError,
    Metric,
    MetricLogger,
    Precision,
    Recall,
    RunningMean,
    RunningStd,
    TopKAccuracy,
    accuracy,
    confusion_matrix,
    explained_variance,
    f1,
    format_confusion_matrix,
    mae,
    mape,
    max_error,
    mse,
    precision,
    r2,
    recall,
    rmse,
    top_k_accuracy,
)
from .text import (  # noqa: E402
    ByteLevelBPETokenizer,
    CharTokenizer,
    LanguageModelDataset,
    from_gpt2_files,
    random_blocks,
)

__all__ += [  # noqa: RUF022 (grouped by topic)
    "CharTokenizer", "ByteLevelBPETokenizer", "from_gpt2_files", "LanguageModelDataset", "random_blocks",
    "Metric", "Accuracy", "Precision", "Recall", "F1", "ConfusionMatrix", "TopKAccuracy",
    "MSE", "RMSE", "MAE", "R2", "MAPE", "ExplainedVariance", "MaxError",
    "RunningMean", "RunningStd", "EMA", "MetricLogger", "EarlyStopping",
    "accuracy", "precision", "recall", "f1", "confusion_matrix", "format_confusion_matrix",
    "top_k_accuracy", "mse", "rmse", "mae", "r2", "mape", "explained_variance", "max_error",
]  # fmt: skip
from .text import WordPieceTokenizer  # noqa: E402

__all__ += ["WordPieceTokenizer"]
