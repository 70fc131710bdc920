"""Hugging Face-side fixtures shared by the import, family and GGUF tests: a byte-level BPE tokenizer with someone
else's special tokens and chat template, saved as transformers saves it."""

from __future__ import annotations

VOCAB = 300


# SmolLM2-Instruct's ChatML template, shortened by its default system prompt.
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def foreign_tokenizer_dir(directory, chat_template=CHATML):
    """A byte-level BPE tokenizer with someone else's special tokens and chat template (as SmolLM2-Instruct /
    Qwen2 have); `chat_template=None` makes it a base model's."""
    import transformers
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<s>", "</s>", "<|im_end|>", "<|im_start|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf.train_from_iterator(["the cat sat on the mat and the dog ran after it"] * 50, trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=hf, bos_token="<s>", eos_token="</s>")
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(directory)
    return hf
