"""Text: character and byte-level BPE tokenizers (GPT-2 compatible) and a language-modelling dataset.

Example:
    >>> from asg.data.text import CharTokenizer, LanguageModelDataset
    >>> tok = CharTokenizer.fit("to be or not to be")
    >>> ds = LanguageModelDataset(tok.encode("to be or not to be"), block_size=4)
    >>> x, y = ds[0]
    >>> tok.decode(x), tok.decode(y)
    ('to b', 'o be')
"""

from .bpe import GPT2_PATTERN, PATTERN_TIMEOUT_S, ByteLevelBPETokenizer, bytes_to_unicode, from_gpt2_files
from .char import CharTokenizer
from .lm import LanguageModelDataset, random_blocks
from .wordpiece import WordPieceTokenizer

__all__ = [
    "GPT2_PATTERN",
    "PATTERN_TIMEOUT_S",
    "ByteLevelBPETokenizer",
    "CharTokenizer",
    "LanguageModelDataset",
    "WordPieceTokenizer",
    "bytes_to_unicode",
    "from_gpt2_files",
    "random_blocks",
]
