"""distill: replace a seq2seq Transformer's attention with shallow MLPs."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from distill.pretrained import from_pretrained


def __getattr__(name: str):
    # Lazy, so that `import distill` (the CLI, config checks) does not pay for importing torch.
    if name == "from_pretrained":
        from distill.pretrained import from_pretrained

        return from_pretrained
    raise AttributeError(f"module 'distill' has no attribute '{name}'")


__all__ = ["__version__", "from_pretrained"]
