"""The special token ids every distill vocabulary shares (distill's SentencePiece models and
every imported vocabulary, renumbered). Apart from ``distill.tokenizer`` so that the model code,
which an export ships, needs no tokenizer library."""

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
