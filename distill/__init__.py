"""distill: replace a seq2seq Transformer's attention with shallow MLPs."""

from __future__ import annotations

from typing import TYPE_CHECKING

# A new file format (distill.formats.FORMAT_VERSION) is a new version: 0.3 writes format 3, and an
# export's config.json carries both numbers.
__version__ = "0.3.0"

if TYPE_CHECKING:
    from distill.pretrained import from_pretrained


def __getattr__(name: str):
    # Lazy, so that `import distill` (the CLI, config checks) does not pay for importing torch.
    if name == "from_pretrained":
        from distill.pretrained import from_pretrained

        return from_pretrained
    raise AttributeError(f"module 'distill' has no attribute '{name}'")


__all__ = ["__version__", "from_pretrained"]
