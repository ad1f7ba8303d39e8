"""asg.zoo — ready-made models (MLP, LeNet-5, ResNet, Transformer, BERT, GPT, ViT), Hugging Face weight
import from local files, and the ``asg-zoo`` command line.

Example:
    >>> import asg.core as ag
    >>> from asg.zoo import GPT, GPTConfig
    >>> model = GPT(GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=2, n_embd=8))
    >>> model(ag.input("idx", ("B", "T"), "int64")).shape
    ('B', 'T', 10)
"""

from .bert import BertConfig, BertModel, mean_pool
from .cli import training_graph
from .cnn import (
    BasicBlock,
    Bottleneck,
    LeNet5,
    LeNetConfig,
    ResNet,
    ResNetConfig,
    resnet18,
    resnet34,
    resnet50,
)
from .gpt import GPT, GPTConfig, KVCache, lm_loss, sample_next
from .hf import WeightImportError, convert_torch_checkpoint, load_bert, load_gpt2, load_resnet, load_vit
from .mlp import MLP, MLPConfig
from .sentence import SentenceEncoder
from .transformer import Seq2SeqTransformer, TransformerConfig, TransformerEncoderModel
from .vit import ViT, ViTConfig

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "MLP",
    "BasicBlock",
    "BertConfig",
    "BertModel",
    "Bottleneck",
    "GPTConfig",
    "KVCache",
    "LeNet5",
    "LeNetConfig",
    "MLPConfig",
    "ResNet",
    "ResNetConfig",
    "SentenceEncoder",
    "Seq2SeqTransformer",
    "TransformerConfig",
    "TransformerEncoderModel",
    "ViT",
    "ViTConfig",
    "WeightImportError",
    "convert_torch_checkpoint",
    "lm_loss",
    "load_bert",
    "load_gpt2",
    "load_resnet",
    "load_vit",
    "mean_pool",
    "resnet18",
    "resnet34",
    "resnet50",
    "sample_next",
    "training_graph",
]
