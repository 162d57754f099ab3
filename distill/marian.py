"""MarianMTModel checkpoints (the opus-mt layout) as teachers of the ``marian`` family: check,
convert, renumber the tokenizer.

A local directory holding a transformers ``MarianMTModel`` (config.json + model.safetensors or
pytorch_model.bin) and its ``MarianTokenizer`` (source.spm, target.spm, vocab.json) becomes a
distill teacher in two steps:

* **ids.** distill's pipeline uses fixed special ids (PAD 0, UNK 1, BOS 2, EOS 3) and masks by
  PAD; Marian starts decoding from its PAD id. ``vocabulary_order`` renumbers Marian's vocabulary
  into distill's ids (one more id than Marian's: BOS, the decoder start, gets its own) and
  ``write_tokenizer`` saves a ``MarianTokenizer`` whose vocab.json holds the renumbered ids, so
  the same transformers class segments text as the user's tokenizer does and yields distill ids.
* **weights.** ``convert`` copies the weights into ``Seq2SeqTransformer`` of the ``marian`` family
  (its ``FAMILIES`` row: post-LN, sin/cos-halves positions, no final norms) through the one table
  ``PARAMS``, the dimensions through the one table ``CONFIG_KEYS``: the teacher then has the same
  modules, site names (``encoder.{i}.self_attn``, ``decoder.{i}.cross_attn``, ...) and call
  signatures as our own, and every stage, student and export works on it unchanged. Embeddings
  and the output layer are copied rows (tied in Marian, separate here); Marian's
  ``final_logits_bias`` becomes the output layer's bias.

Everything a checkpoint needs is checked before anything is written; a directory that is not a
Marian checkpoint raises ``CheckpointError`` naming the file. The renumbered tokenizer is read by
``distill.tokenizer.MarianVocab``; ``distill.marian_train`` makes and trains a fresh checkpoint.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from distill.checkpoint import atomic_dir, read_json
from distill.errors import CheckpointError
from distill.importers import Imported
from distill.model import BOS_ID, EOS_ID, PAD_ID, UNK_ID, ModelConfig, Seq2SeqTransformer
from distill.tokenizer import MarianVocab, marian_tokenizer

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
ACTIVATIONS = {"swish": "swish", "silu": "swish", "relu": "relu", "gelu": "gelu"}
BOS_PIECES = ("<s>", "<distill_bos>")  # the first one Marian's vocabulary does not use
BOS_LOGIT = -1e4  # distill's BOS is never a target: its logit is a constant far below the rest

# ModelConfig field -> the MarianConfig keys that hold it (a pair must agree): the one mapping
# between the two configs, read both ways (``convert``; ``distill.marian_train.opus_mt_config``).
CONFIG_KEYS = {
    "d_model": ("d_model",),
    "n_heads": ("encoder_attention_heads", "decoder_attention_heads"),
    "d_ff": ("encoder_ffn_dim", "decoder_ffn_dim"),
    "n_enc": ("encoder_layers",),
    "n_dec": ("decoder_layers",),
    "dropout": ("dropout",),
}

# distill module path under layer i -> Marian's module under model.{stack}.layers.{i}; each
# module's weight and bias follow. The one place that knows how Marian names its layers.
PARAMS = {
    "encoder": {
        "self_attn_sublayer.attn.q_proj": "self_attn.q_proj",
        "self_attn_sublayer.attn.k_proj": "self_attn.k_proj",
        "self_attn_sublayer.attn.v_proj": "self_attn.v_proj",
        "self_attn_sublayer.out_proj": "self_attn.out_proj",
        "self_attn_sublayer.norm": "self_attn_layer_norm",
        "ff_sublayer.ff.fc1": "fc1",
        "ff_sublayer.ff.fc2": "fc2",
        "ff_sublayer.norm": "final_layer_norm",
    },
    "decoder": {
        "self_attn_sublayer.attn.q_proj": "self_attn.q_proj",
        "self_attn_sublayer.attn.k_proj": "self_attn.k_proj",
        "self_attn_sublayer.attn.v_proj": "self_attn.v_proj",
        "self_attn_sublayer.out_proj": "self_attn.out_proj",
        "self_attn_sublayer.norm": "self_attn_layer_norm",
        "cross_attn_sublayer.attn.q_proj": "encoder_attn.q_proj",
        "cross_attn_sublayer.attn.k_proj": "encoder_attn.k_proj",
        "cross_attn_sublayer.attn.v_proj": "encoder_attn.v_proj",
        "cross_attn_sublayer.out_proj": "encoder_attn.out_proj",
        "cross_attn_sublayer.norm": "encoder_attn_layer_norm",
        "ff_sublayer.ff.fc1": "fc1",
        "ff_sublayer.ff.fc2": "fc2",
        "ff_sublayer.norm": "final_layer_norm",
    },
}


def check_dir(path: str | Path, max_len: int) -> dict:
    """Marian's config.json of the checkpoint ``path`` if distill can use it as a teacher with
    sequences of ``max_len`` tokens; ``CheckpointError`` names the file (and key) otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (a MarianMTModel checkpoint is one)")
    config = read_json(path / "config.json")
    where = path / "config.json"
    if not isinstance(config, dict) or config.get("model_type") != "marian":
        found = config.get("model_type") if isinstance(config, dict) else None
        raise CheckpointError(
            f"{where}: model_type is {found!r}; only MarianMTModel ('marian') checkpoints can "
            "be imported"
        )
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise CheckpointError(f"{path / WEIGHT_FILES[0]}: file not found (no model weights)")
    for name in MarianVocab.FILES:
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name}: file not found (the MarianTokenizer's files)")
    if (path / "target_vocab.json").exists() or config.get("separate_vocabs"):
        raise CheckpointError(f"{path / 'target_vocab.json'}: separate vocabularies unsupported")
    for a, *others in CONFIG_KEYS.values():
        for b in others:
            if config.get(a) != config.get(b):
                raise CheckpointError(f"{where}: '{a}' and '{b}' differ; distill needs them equal")
    if config.get("activation_function", "swish") not in ACTIVATIONS:
        found = config["activation_function"]
        raise CheckpointError(f"{where}: 'activation_function' {found!r} is not supported")
    if config.get("scale_embedding") is False:
        raise CheckpointError(f"{where}: 'scale_embedding' false is not supported")
    if config.get("max_position_embeddings", 0) < max_len:
        raise CheckpointError(
            f"{where}: 'max_position_embeddings' {config.get('max_position_embeddings')} is "
            f"below max_len {max_len}"
        )
    for key in ("pad_token_id", "eos_token_id", "vocab_size"):
        if not isinstance(config.get(key), int):
            raise CheckpointError(f"{where}: '{key}' missing")
    return config


def vocabulary_order(path: str | Path, config: dict) -> tuple[list[int], dict[str, int]]:
    """(order, vocab): ``order[d]`` is the Marian id of distill id ``d`` (PAD, UNK, BOS = the
    decoder start, EOS, then every other Marian id in order) and ``vocab`` the Marian vocabulary
    (piece -> Marian id), checked against the model's ``vocab_size`` and special ids."""
    where = Path(path) / "vocab.json"
    vocab = read_json(where)
    n = config["vocab_size"]
    if not isinstance(vocab, dict) or sorted(vocab.values()) != list(range(n)):
        size = len(vocab) if isinstance(vocab, dict) else 0
        raise CheckpointError(
            f"{where}: {size} pieces do not number 0..{n - 1} as the model's vocab_size {n} needs"
        )
    unk = vocab.get("<unk>")
    if unk is None:
        raise CheckpointError(f"{where}: no '<unk>' piece")
    pad, eos = config["pad_token_id"], config["eos_token_id"]
    start = config.get("decoder_start_token_id", pad)
    if start is None:
        start = pad
    specials = [pad, unk, start, eos]
    rest = [i for i in range(n) if i not in (pad, unk, eos)]
    return specials + rest, vocab


def write_tokenizer(path: str | Path, order: list[int], vocab: dict[str, int], out: Path, max_len):
    """Save into ``out`` (atomically) the checkpoint's MarianTokenizer renumbered to distill ids:
    the same SentencePiece models and pieces, vocab.json in ``order``, a BOS piece for id 2."""
    src = marian_tokenizer(path)
    piece = {i: p for p, i in vocab.items()}
    bos = next(p for p in BOS_PIECES if p not in vocab)
    renumbered = {piece[m]: d for d, m in enumerate(order) if d != BOS_ID}
    renumbered[bos] = BOS_ID
    with tempfile.TemporaryDirectory() as tmp, atomic_dir(out) as target:
        Path(tmp, "vocab.json").write_text(json.dumps(renumbered, ensure_ascii=False), "utf-8")
        from transformers import MarianTokenizer

        tok = MarianTokenizer(
            source_spm=str(Path(path) / "source.spm"),
            target_spm=str(Path(path) / "target.spm"),
            vocab=str(Path(tmp) / "vocab.json"),
            source_lang=src.source_lang,
            target_lang=src.target_lang,
            unk_token=piece[order[UNK_ID]],
            eos_token=piece[order[EOS_ID]],
            pad_token=piece[order[PAD_ID]],
            bos_token=bos,
            model_max_length=max_len,
        )
        tok.save_pretrained(str(target))


def convert(model, order: list[int], max_len: int) -> Seq2SeqTransformer:
    """A ``MarianMTModel`` as a distill teacher of the ``marian`` family (eval mode)."""
    c = model.config
    dims = {ours: getattr(c, keys[0]) for ours, keys in CONFIG_KEYS.items()}
    dims["dropout"] = float(dims["dropout"])
    cfg = ModelConfig(
        **dims,
        vocab_size=len(order),
        max_len=max_len,
        family="marian",
        activation=ACTIVATIONS[c.activation_function],
    )
    theirs = model.state_dict()
    idx = torch.tensor(order)
    ours = {
        "src_embed.weight": theirs["model.encoder.embed_tokens.weight"][idx],
        "tgt_embed.weight": theirs["model.decoder.embed_tokens.weight"][idx],
        "generator.weight": model.lm_head.weight.detach()[idx].clone(),
        "generator.bias": model.final_logits_bias.detach()[0, idx].clone(),
    }
    ours["generator.weight"][BOS_ID] = 0.0
    ours["generator.bias"][BOS_ID] = BOS_LOGIT
    for stack, table in PARAMS.items():
        for i in range(cfg.n_enc if stack == "encoder" else cfg.n_dec):
            for mine, marian in table.items():
                for kind in ("weight", "bias"):
                    ours[f"{stack}.{i}.{mine}.{kind}"] = theirs[
                        f"model.{stack}.layers.{i}.{marian}.{kind}"
                    ]
    teacher = Seq2SeqTransformer(cfg)
    teacher.load_state_dict({k: v.detach().clone().float() for k, v in ours.items()})
    return teacher.eval()


def load_checkpoint(path: str | Path, max_len: int):
    """(converted teacher, MarianMTModel, order, vocab) of a checked checkpoint directory."""
    config = check_dir(path, max_len)
    order, vocab = vocabulary_order(path, config)
    tok = marian_tokenizer(path)
    for name, key in (("pad", "pad_token_id"), ("eos", "eos_token_id"), ("unk", None)):
        want = config[key] if key else vocab["<unk>"]
        if getattr(tok, f"{name}_token_id") != want:
            raise CheckpointError(
                f"{Path(path) / 'vocab.json'}: the tokenizer's {name} id is "
                f"{getattr(tok, f'{name}_token_id')}, the model's is {want}"
            )
    from transformers import MarianMTModel

    try:
        model = MarianMTModel.from_pretrained(str(path), local_files_only=True).eval()
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: cannot load the MarianMTModel ({first})") from None
    return convert(model, order, max_len), model, order, vocab


def import_checkpoint(path: str | Path, max_len: int) -> Imported:
    """``distill.importers``' entry: the converted teacher and its tokenizer's writer."""
    teacher, _, order, vocab = load_checkpoint(path, max_len)
    return Imported(teacher, lambda out: write_tokenizer(path, order, vocab, out, max_len))
