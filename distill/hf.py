"""transformers integration: a config and a seq2seq LM around distill's (spliced) model.

An export ships this module as ``distill_hf.py`` beside the modules it needs (``distill_model.py``,
...: written at export time by ``distill.remote_code``, imports made relative; config.json's
auto_map names the classes here), so

    AutoModelForSeq2SeqLM.from_pretrained(EXPORT_DIR, trust_remote_code=True)

works without ``distill`` installed (torch, transformers and sentencepiece suffice: this module
and what it imports may use nothing else, ``remote_code.ALLOWED``). With the export's
``generation_config.json``, ``generate`` gives the tokens of ``distill.decode`` (greedy, and beam
search: both use transformers' default ``early_stopping=False``) for sources that end with EOS.
``generate`` first takes what the model cannot take as it is: left padding (positions are
absolute, as in training) is moved to the right, a source longer than ``max_len`` tokens is split
into parts as ``distill translate`` splits it (``distill.chunks``), and a length limit beyond
``max_len`` is lowered to it. Decoding is incremental through the same per-site cache as
``distill.decode`` (``DecoderCache``: the teacher's K/V and each student's own state), which
``generate`` carries from step to step and reorders for beam search; ``use_cache=False`` re-runs
the decoder over the whole prefix at every step and gives the same tokens.
"""

from __future__ import annotations

import copy
import dataclasses
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.initialization import no_init_weights
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.utils import logging

from distill.chunks import split_ids
from distill.export_config import BOUNDARY_KEYS, SPECIAL_IDS, build_model, parse_config
from distill.formats import FORMAT_VERSION, old_key_mapping
from distill.model import BOS_ID, EOS_ID, PAD_ID, ModelConfig, Seq2SeqTransformer, reorder_cache

logger = logging.get_logger(__name__)
# generate() options whose output has a row (or a step's scores) per generated sequence, and when a
# value sets them: the parts of a split source are generated as rows of their own, which cannot be
# joined back into these.
UNSTITCHABLE = {
    "return_dict_in_generate": bool,
    "num_return_sequences": lambda n: (n or 1) > 1,
    "decoder_input_ids": lambda ids: ids is not None,
    "streamer": lambda streamer: streamer is not None,
}


def _config_body(ns: dict) -> None:
    """DistillConfig's fields: every ``ModelConfig`` field with its default, then the export's."""
    fields = {f.name: (f.type, f.default) for f in dataclasses.fields(ModelConfig)}
    fields.update(
        replacements=("dict | None", None),  # {site: StudentSpec dict}; None = the teacher
        tokenizer=("dict | None", None),
        is_encoder_decoder=("bool", True),
        use_cache=("bool", True),
        **{key: ("int | None", value) for key, value in SPECIAL_IDS.items()},
        **{key: ("list | None", None) for key in BOUNDARY_KEYS},  # None: an older export
    )
    ns["__module__"] = __name__
    ns["__doc__"] = "``config.json`` of an export as a transformers config (see ``ModelConfig``)."
    ns["__annotations__"] = {name: tp for name, (tp, _) in fields.items()}
    ns.update({name: default for name, (_, default) in fields.items()})
    ns["model_type"] = "distill"


DistillConfig = types.new_class("DistillConfig", (PretrainedConfig,), exec_body=_config_body)


def _spec(config: DistillConfig):
    """(ModelConfig, replacements) of ``config``, checked like distill's own loader checks it."""
    return parse_config({**config.to_dict(), "replacements": config.replacements or {}}, "config")


@dataclass
class EncoderOutput(BaseModelOutput):
    """The encoder memory plus its padding mask, so generate() expands both per beam."""

    mask: torch.BoolTensor | None = None


class DecoderCache:
    """What ``generate`` carries between steps: one dict per decoder layer, in which every site
    keeps its own incremental state (``distill.cache``), and how many positions it has
    seen. Not a transformers ``Cache``: students keep state that is not keys and values."""

    def __init__(self, n_layers: int):
        self.layers: list[dict] = [{} for _ in range(n_layers)]
        self.length = 0

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        reorder_cache(self.layers, beam_idx)


class _Encoder:
    """What generate() calls once per batch: distill's encoder behind transformers' keywords.

    Not an ``nn.Module`` on purpose: registering it would list every encoder weight twice.
    """

    def __init__(self, model: Seq2SeqTransformer):
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask=None, **kwargs) -> EncoderOutput:
        if attention_mask is not None:  # distill masks by PAD: fold the mask into the ids
            input_ids = input_ids.masked_fill(attention_mask == 0, PAD_ID)
        memory, mask = self.model.encode(input_ids)
        return EncoderOutput(last_hidden_state=memory, mask=mask)

    __call__ = forward


class DistillForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """A distill export as a transformers seq2seq LM (``self.model`` is the spliced model)."""

    config_class = DistillConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

    def __init__(self, config: DistillConfig):
        super().__init__(config)
        self.model = build_model(*_spec(config))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: torch.nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, Seq2SeqTransformer):
            # transformers materialises non-persistent buffers (sinusoidal positions, causal
            # masks) as uninitialised memory when loading; recompute them from a skeleton.
            with no_init_weights(), torch.device("cpu"):
                skeleton = build_model(*_spec(self.config))
            for name, buffer in skeleton.named_buffers():
                module.get_buffer(name).copy_(buffer)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
        """transformers' loader; an export older than format 3 (parameters named as
        ``distill.formats`` says) loads through ``key_mapping``. Only a format 1 export needs it:
        a later one ships the model code its names are from."""
        if config is None:
            config, kwargs = cls.config_class.from_pretrained(
                pretrained_model_name_or_path, return_unused_kwargs=True, **kwargs
            )
        if getattr(config, "format_version", 1) < FORMAT_VERSION and "key_mapping" not in kwargs:
            kwargs["key_mapping"] = old_key_mapping(config.n_enc, config.n_dec)
        path = pretrained_model_name_or_path
        return super().from_pretrained(path, *args, config=config, **kwargs)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # forward creates its own DecoderCache

    def _reorder_cache(self, cache: DecoderCache, beam_idx: torch.Tensor) -> DecoderCache:
        cache.reorder_cache(beam_idx)
        return cache

    def get_encoder(self, modality: str | None = None) -> _Encoder:
        return _Encoder(self.model)

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, cache=None, **kwargs) -> dict:
        # The whole prefix goes in; forward feeds the decoder what the cache has not seen.
        kwargs.update(next_sequence_length=None)
        inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        inputs["cache"] = cache
        return inputs

    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        """transformers' ``generate``, after what distill's model cannot take as it is:

        - padding before a row's tokens (zeros before ones in ``attention_mask``, or PAD ids) is
          moved after them: positions are absolute, a left-padded row would encode shifted;
        - a row longer than ``max_len`` tokens (tokenized without a cut) is split into parts as
          ``distill translate`` splits it (``distill.chunks.split_ids`` at the config's
          ``sentence_end_ids`` and ``clause_end_ids``; every ``max_len - 1`` pieces for an export
          without them), each part ending with EOS. Every part of every row is generated in one
          batch; a row's output is the decoder start, its parts' tokens joined, and EOS if its
          last part ended with one, right-padded with PAD. Options that return a row per
          generated sequence (``UNSTITCHABLE``) cannot be joined so: a ValueError;
        - ``max_new_tokens`` (``max_length``) beyond the ``max_len`` tokens the decoder can hold
          (plus the decoder start) is lowered to it, with a warning once.
        """
        generation_config = self._clamp_length(generation_config, kwargs)
        ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        if ids is None or ids.dim() != 2 or kwargs.get("encoder_outputs") is not None:
            return super().generate(ids, generation_config, **kwargs)
        keep = ids != PAD_ID  # (B, S): what the encoder reads (distill masks by PAD)
        if kwargs.get("attention_mask") is not None:
            keep &= kwargs["attention_mask"].bool()
        right = torch.arange(ids.size(1), device=ids.device) < keep.sum(dim=1, keepdim=True)
        if bool((keep == right).all()) and ids.size(1) <= self.config.max_len:
            return super().generate(ids, generation_config, **kwargs)  # as it always was
        rows = [[t for t, k in zip(row, ks) if k] for row, ks in zip(ids.tolist(), keep.tolist())]
        if max(map(len, rows), default=0) <= self.config.max_len:  # left-padded, or too wide
            parts, owner = rows, None
        else:
            self._check_joinable(generation_config, kwargs)
            split = self._parts(rows)
            parts = [part for row_parts in split for part in row_parts]
            owner = [i for i, row_parts in enumerate(split) for _ in row_parts]
        width = max(map(len, parts), default=0)
        batch = torch.tensor([part + [PAD_ID] * (width - len(part)) for part in parts])
        kwargs["attention_mask"] = (batch != PAD_ID).long().to(ids.device)
        out = super().generate(batch.to(ids.device), generation_config, **kwargs)  # (parts, T)
        return out if owner is None else _join(out.tolist(), owner, len(rows)).to(ids.device)

    def _check_joinable(self, generation_config, kwargs: dict) -> None:
        """ValueError naming the first option set (in ``kwargs`` or the config) whose output has
        a row per generated sequence (``UNSTITCHABLE``): split rows could not be joined into it."""
        config = generation_config if generation_config is not None else self.generation_config
        for key, is_set in UNSTITCHABLE.items():
            if is_set(kwargs.get(key, getattr(config, key, None))):
                raise ValueError(
                    f"generate: a source longer than max_len {self.config.max_len} tokens is "
                    f"split into parts whose outputs are joined, which {key} cannot be; pass "
                    f"shorter sources (tokenize with truncation=True, "
                    f"max_length={self.config.max_len})"
                )

    def _parts(self, rows: list[list[int]]) -> list[list[list[int]]]:
        """Each row as the sources its parts are: itself if it fits, else ``split_ids`` of its
        pieces (without its EOS) with EOS after each part."""
        limit = self.config.max_len - 1
        ends = [getattr(self.config, key, None) or () for key in BOUNDARY_KEYS]
        out = []
        for row in rows:
            if len(row) <= self.config.max_len:
                out.append([row])
                continue
            body = row[:-1] if row[-1] == EOS_ID else row
            out.append([part + [EOS_ID] for part in split_ids(body, limit, *ends)])
        return out

    def _clamp_length(self, generation_config, kwargs: dict):
        """``generation_config`` (a copy if changed), after lowering its or ``kwargs``'
        ``max_new_tokens`` (without one, ``max_length``: it counts the decoder start) to what the
        decoder's ``max_len`` positions can hold: past them decoding would fail half way."""
        config = generation_config if generation_config is not None else self.generation_config
        most = self.config.max_len
        if kwargs.get("max_new_tokens", config.max_new_tokens) is not None:
            key, allowed = "max_new_tokens", most
        else:
            key, allowed = "max_length", most + 1
        value = kwargs.get(key, getattr(config, key))
        if value is None or value <= allowed:
            return generation_config
        logger.warning_once(
            f"generate: {key}={value} is more than this model decodes (max_len {most} tokens); "
            f"using {key}={allowed}"
        )
        if key in kwargs or generation_config is None:
            kwargs[key] = allowed
        else:  # a config and keywords together are deprecated in transformers: change the config
            generation_config = copy.deepcopy(generation_config)
            setattr(generation_config, key, allowed)
        return generation_config

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        encoder_outputs=None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        cache: DecoderCache | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput | tuple:
        """Logits (B, T, V) for ``decoder_input_ids`` (or labels shifted right, with a loss).

        With ``use_cache`` (the config's default; never with labels) the logits are those of the
        positions ``cache`` has not seen yet, and the output carries the updated cache."""
        if encoder_outputs is None:
            encoder_outputs = self.get_encoder()(input_ids, attention_mask)
        memory = encoder_outputs[0]  # (B, S, D)
        mask = getattr(encoder_outputs, "mask", None)
        if mask is None:
            mask = (
                attention_mask.bool()
                if attention_mask is not None
                else torch.ones(memory.shape[:2], dtype=torch.bool, device=memory.device)
            )
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids or labels")
            shifted = labels[:, :-1].masked_fill(labels[:, :-1] == -100, PAD_ID)
            bos = torch.full_like(labels[:, :1], BOS_ID)
            decoder_input_ids = torch.cat([bos, shifted], dim=1)  # (B, T)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and labels is None:
            cache = cache if cache is not None else DecoderCache(len(self.model.decoder))
            start = cache.length
            new = decoder_input_ids[:, start:]
            logits = self.model.decode(new, memory, mask, cache.layers, start=start)
            cache.length += new.size(1)
        else:
            cache = None
            logits = self.model.decode(decoder_input_ids, memory, mask)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100
            )
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return Seq2SeqLMOutput(
            loss=loss, logits=logits, cache=cache, encoder_last_hidden_state=memory
        )


def _join(sequences: list[list[int]], owner: list[int], n_rows: int) -> torch.Tensor:
    """(n_rows, T) generate output of split sources from that of their parts (``sequences``,
    part k of row ``owner[k]``, in order): the first part's decoder start, every part's tokens up
    to its EOS (or PAD), EOS if the row's last part ended with one; right-padded with PAD."""
    rows: list[list[int]] = [[] for _ in range(n_rows)]
    ended = [False] * n_rows
    for i, seq in zip(owner, sequences):
        if not rows[i]:
            rows[i].append(seq[0])
        tokens = seq[1:]
        stop = next((k for k, t in enumerate(tokens) if t in (EOS_ID, PAD_ID)), len(tokens))
        rows[i] += tokens[:stop]
        ended[i] = stop < len(tokens) and tokens[stop] == EOS_ID
    rows = [row + [EOS_ID] * end for row, end in zip(rows, ended)]
    width = max(map(len, rows))
    return torch.tensor([row + [PAD_ID] * (width - len(row)) for row in rows])


__all__ = ["DistillConfig", "DistillForConditionalGeneration"]
