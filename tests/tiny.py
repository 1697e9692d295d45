"""A tiny random Llama and a byte-level BPE tokenizer, built offline in well under a second.

`make_tiny()` -> (model, tokenizer). The tokenizer is trained on a few bAbI- and GSM8K-like sentences, so such
text splits into a sensible number of tokens, and being byte-level it encodes any text at all. It has a
ChatML-style chat template, <|im_end|> as end of turn (eos) and <pad> for padding. With `tmp_dir`, both are
saved there and load back with AutoModelForCausalLM / AutoTokenizer.from_pretrained(tmp_dir).
"""

from __future__ import annotations

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<pad>", "<|im_start|>", "<|im_end|>"]

CORPUS = [
    "Mary moved to the bathroom. John went to the hallway. Where is Mary? bathroom",
    "Sandra journeyed to the garden. Daniel travelled to the office. Where is Daniel? office",
    "John picked up the football. John went to the kitchen. Where is the football? kitchen",
    "Daniel dropped the milk there. Sandra got the apple. Mary went back to the bedroom.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May? #### 72",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
    "Betty is saving money for a new wallet which costs $100. 3 + 4 = 7, 12 * 5 = 60, 100 / 4 = 25.",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
    "You are a helpful assistant. Answer with one word. Read carefully. The answer is 0123456789.",
    "Question: (a) yes; (b) no! \"Quoted\" text, 'single' quotes, 50% off: 1,000.50 - 2.5 = 998.0?",
]


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + len(SPECIAL) + 400,  # the byte alphabet, the specials, and a few hundred merges
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_tiny(tmp_dir=None):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    if tmp_dir is not None:
        model.save_pretrained(tmp_dir)
        tok.save_pretrained(tmp_dir)
    return model, tok
