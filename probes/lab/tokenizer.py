"""A byte-level BPE tokenizer trained on the lab corpus, every digit its own token, loadable with `AutoTokenizer`.

Digits are split one by one before BPE (as in the Llama and Qwen tokenizers), so numbers are spelled digit by
digit and arithmetic is learnable by a small model. Byte-level BPE decodes back to the exact text (newlines and
code indentation included). The prompt format is chat-free: `Question: <problem>\\nAnswer:\\n`, the response
follows, and `<|endoftext|>` ends it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"
PAD = "<|pad|>"


def format_prompt(problem_text: str) -> str:
    """The prompt a model sees: `Question: <problem>\\nAnswer:\\n`."""
    return f"Question: {problem_text}\nAnswer:\n"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with individual digits, trained on `texts`; `<|endoftext|>` is eos, `<|pad|>` pad."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=END_OF_TEXT, pad_token=PAD,
                                   bos_token=None, padding_side="left")


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    """Write the tokenizer files into `folder` (next to a checkpoint's weights)."""
    tokenizer.save_pretrained(folder)
