"""transformers integration: a config and a seq2seq LM around distill's (spliced) model.

An export ships this module as ``distill_hf.py`` beside the modules it needs (``distill_model.py``,
...: written at export time by ``distill.remote_code``, imports made relative; config.json's
auto_map names the classes here), so

    AutoModelForSeq2SeqLM.from_pretrained(EXPORT_DIR, trust_remote_code=True)

works without ``distill`` installed (torch, transformers and sentencepiece suffice: this module
and what it imports may use nothing else, ``remote_code.ALLOWED``). With the export's
``generation_config.json``, ``generate`` gives the tokens of ``distill.decode`` (greedy, and beam
search: both use transformers' default ``early_stopping=False``) for sources that end with EOS and
are right-padded (positions are absolute, as in training). Decoding is incremental through the
same per-site cache as ``distill.decode`` (``DecoderCache``: the teacher's K/V and each student's
own state), which ``generate`` carries from step to step and reorders for beam search;
``use_cache=False`` re-runs the decoder over the whole prefix at every step and gives the same
tokens.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.initialization import no_init_weights
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from distill.export_config import SPECIAL_IDS, build_model, parse_config
from distill.formats import FORMAT_VERSION, old_key_mapping
from distill.model import BOS_ID, PAD_ID, ModelConfig, Seq2SeqTransformer, reorder_cache


def _config_body(ns: dict) -> None:
    """DistillConfig's fields: every ``ModelConfig`` field with its default, then the export's."""
    fields = {f.name: (f.type, f.default) for f in dataclasses.fields(ModelConfig)}
    fields.update(
        replacements=("dict | None", None),  # {site: StudentSpec dict}; None = the teacher
        tokenizer=("dict | None", None),
        is_encoder_decoder=("bool", True),
        use_cache=("bool", True),
        **{key: ("int | None", value) for key, value in SPECIAL_IDS.items()},
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


__all__ = ["DistillConfig", "DistillForConditionalGeneration"]
