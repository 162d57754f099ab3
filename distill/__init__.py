"""distill: replace a seq2seq Transformer's attention with shallow MLPs."""

__version__ = "0.1.0"
