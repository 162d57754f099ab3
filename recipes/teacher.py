"""Train the teacher Transformer, then score it with sacreBLEU on the test split.

    distill run teacher --config demo            # embedded corpus, ~10 min on 2 CPU cores
    distill run teacher --config tiny            # seconds; what the tests run
    distill run teacher --config demo pretrained=PATH run_dir=runs/mine   # your MarianMTModel

Writes RUN_DIR/teacher/: config.yaml, spm.model, data.json (length-filter counts), checkpoint/
(resumable), metrics.jsonl, model.json + model.safetensors, test.hyp.txt and bleu.json.
Run it again after an interruption: it continues from the last checkpoint; a finished run is
skipped.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.bleu import evaluate_model
from distill.checkpoint import atomic_dir, atomic_write_json, atomic_write_text, read_json
from distill.config import to_dict
from distill.data import DataConfig, Tokenizer, encode_pairs, load_pairs, spread, token_batches
from distill.device import stage_device
from distill.errors import DataError
from distill.importers import import_checkpoint
from distill.losses import teacher_loss
from distill.marian import vocabulary_order, write_tokenizer
from distill.marian_train import MarianTraining, opus_mt_config, save_opus_mt_tokenizer
from distill.model import ModelConfig, Seq2SeqTransformer, count_parameters
from distill.runs import save_model, teacher_dir, write_config
from distill.stages import Claim, begin, result_settings
from distill.tokenizer import MarianVocab, load_tokenizer
from distill.train import TrainConfig, fit, process_state

log = logging.getLogger("recipes.teacher")


@dataclass
class EvalConfig:
    beam: int = 1
    batch_size: int = 64
    max_sentences: int = 0  # 0 = the whole test split

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise ValueError(f"beam must be >= 1, got {self.beam}")


@dataclass
class Config:
    run_dir: str = ""
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    # A local MarianMTModel checkpoint (opus-mt layout) to import as the teacher: scored on the
    # run's test split, not trained. "" = train a teacher of `model` on the corpus.
    pretrained: str = ""
    label_smoothing: float = 0.1
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # vocab_size, max_len come from data
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


def prepare_tokenizer(cfg: Config, out: Path, train_pairs) -> Tokenizer:
    path = out / "spm.model"
    if path.exists():
        return Tokenizer(path)
    texts = [s for pair in train_pairs for s in pair]
    log.info(
        "training a %d-piece SentencePiece model on %d sentences", cfg.data.vocab_size, len(texts)
    )
    return Tokenizer.train(texts, cfg.data.vocab_size, path)


def train_model(cfg: Config, model, loss, train, valid, out: Path, d_model: int, desc: str):
    """``fit`` on ``loss(model, batch, smoothing)``: label-smoothed training batches of
    ``cfg.data.batch_tokens``, the unsmoothed per-token loss on the validation split."""
    valid_batches = token_batches(valid, cfg.data.batch_tokens, shuffle=False)

    def validate(m) -> dict[str, float]:
        total = tokens = 0.0
        device = next(m.parameters()).device
        for b in valid_batches:
            total += loss(m, b.to(device), 0.0).item() * b.ntokens
            tokens += b.ntokens
        return {"valid_loss": total / max(tokens, 1)}

    fit(
        model,
        lambda epoch: token_batches(
            train, cfg.data.batch_tokens, shuffle=True, seed=cfg.train.seed, epoch=epoch
        ),
        lambda m, b: loss(m, b, cfg.label_smoothing),
        cfg.train,
        out,
        d_model=d_model,
        desc=desc,
        validate=validate,
    )


def score_teacher(cfg: Config, out: Path, model, tok, test_pairs, report) -> dict:
    """Translate the test split's in-range pairs; write test.hyp.txt and bleu.json (last)."""
    in_range = [test_pairs[i] for i in report.kept_indices]
    in_range = spread(in_range, cfg.eval.max_sentences)
    result, hyps = evaluate_model(
        model, tok, in_range, beam=cfg.eval.beam, batch_size=cfg.eval.batch_size, progress=True
    )
    result["test_filter"] = report.counts()
    atomic_write_text(out / "test.hyp.txt", "".join(h + "\n" for h in hyps))
    atomic_write_json(out / "bleu.json", result)
    log.info(
        "teacher test BLEU %.2f chrF %.2f (%d sentences, %s)",
        result["bleu"],
        result["chrf"],
        result["n"],
        result["bleu_signature"],
    )
    return result


def import_teacher(cfg: Config, out: Path, test_pairs, claim: Claim) -> Path:
    """Make the transformers checkpoint ``cfg.pretrained`` the run's teacher: check it, convert
    it (``distill.importers``: by its model_type), save it with its renumbered tokenizer, score
    it. A directory that is not a usable checkpoint fails before anything is written."""
    imported = import_checkpoint(cfg.pretrained, cfg.data.max_len)
    model = imported.model
    out.mkdir(parents=True, exist_ok=True)
    claim.store()
    write_config(out, cfg)
    imported.write_tokenizer(out / "tokenizer")
    tok = load_tokenizer(out / "tokenizer")
    _, report = encode_pairs(test_pairs, tok, cfg.data.max_len)
    if not report.kept:
        raise DataError(f"{cfg.data.path or cfg.data.source}: no test pair fits max_len: {report}")
    log.info("imported %s: %d parameters", cfg.pretrained, count_parameters(model))
    save_model(out, model)
    score_teacher(cfg, out, model.to(stage_device()), tok, test_pairs, report)
    return out


def train_marian(cfg: Config, train_pairs, valid_pairs) -> Path:
    """Train a transformers ``MarianMTModel`` of ``cfg.model``'s shape with distill's loop and
    save it in the opus-mt layout to RUN_DIR/marian/ (``save_pretrained`` + MarianTokenizer
    files): a stand-in for a downloaded opus-mt checkpoint, imported from there like one.
    Works in RUN_DIR/marian-train/ (tokenizer, resumable checkpoint, metrics)."""
    from transformers import MarianMTModel

    final, work = Path(cfg.run_dir) / "marian", Path(cfg.run_dir) / "marian-train"
    if (final / "config.json").is_file():
        log.info("MarianMTModel already trained: %s", final)
        return final
    work.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    state = process_state()
    src_lang, _, tgt_lang = cfg.data.pair.partition("-")
    with state.main_process_first():
        write_config(work, cfg)
        prepare_tokenizer(cfg, work, train_pairs)
        if not (work / "opus-mt" / "vocab.json").is_file():
            with atomic_dir(work / "opus-mt") as tmp:
                save_opus_mt_tokenizer(work / "spm.model", tmp, src_lang, tgt_lang)
    vocab = read_json(work / "opus-mt" / "vocab.json")
    mcfg = dataclasses.replace(cfg.model, vocab_size=len(vocab), max_len=cfg.data.max_len)
    config = opus_mt_config(vocab, mcfg)
    order, _ = vocabulary_order(work / "opus-mt", config.to_dict())
    with state.main_process_first():
        if not (work / "tokenizer" / "vocab.json").is_file():
            write_tokenizer(work / "opus-mt", order, vocab, work / "tokenizer", mcfg.max_len)
    tok = MarianVocab(work / "tokenizer")
    train, _ = encode_pairs(train_pairs, tok, mcfg.max_len)
    valid, _ = encode_pairs(valid_pairs, tok, mcfg.max_len)
    torch.manual_seed(cfg.train.seed)
    model = MarianTraining(MarianMTModel(config), order)
    log.info("MarianMTModel: %d parameters", count_parameters(model))
    train_model(
        cfg, model, lambda m, b, s: m.loss(b, s), train, valid, work, mcfg.d_model, "marian"
    )
    if state.is_main_process:
        with atomic_dir(final) as tmp:
            model.marian.save_pretrained(str(tmp))
            for f in (work / "opus-mt").iterdir():
                shutil.copyfile(f, tmp / f.name)
    state.wait_for_everyone()
    return final


def main(cfg: Config) -> Path:
    out = teacher_dir(cfg.run_dir)
    # The model's structure as far as its family gives it is no setting of its own: a run from
    # before ModelConfig had those fields stored none of them, and still matches.
    settings = result_settings({**to_dict(cfg), "model": cfg.model.family_deltas()})
    claim = begin(out, cfg.run_dir, settings, finished=(out / "bleu.json").exists())
    if claim.status == "skip":
        log.info("teacher already trained: %s (BLEU %s)", out, read_json(out / "bleu.json")["bleu"])
        return out
    # Read every split before writing anything: a bad file fails here, not after training, and
    # leaves no half-made run dir behind.
    train_pairs = load_pairs(cfg.data, "train")
    valid_pairs = load_pairs(cfg.data, "valid")
    test_pairs = load_pairs(cfg.data, "test")
    if not any(s.strip() and t.strip() for s, t in train_pairs):
        raise DataError(f"{cfg.data.path or cfg.data.source}: every train pair has an empty side")
    if not cfg.pretrained and cfg.model.family == "marian":
        if process_state().is_main_process:
            claim.store()  # before its training dirs, which belong to this stage
        checkpoint = train_marian(cfg, train_pairs, valid_pairs)
        cfg = dataclasses.replace(cfg, pretrained=str(checkpoint))
    if cfg.pretrained:
        return import_teacher(cfg, out, test_pairs, claim)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    state = process_state()  # one process, or each of several (accelerate launch / torchrun)
    with state.main_process_first():  # the main process trains the tokenizer, the others load it
        write_config(out, cfg)
        tok = prepare_tokenizer(cfg, out, train_pairs)
    train, train_report = encode_pairs(train_pairs, tok, cfg.data.max_len)
    valid, valid_report = encode_pairs(valid_pairs, tok, cfg.data.max_len)
    _, test_report = encode_pairs(test_pairs, tok, cfg.data.max_len)
    for split, report in (("train", train_report), ("test", test_report)):
        if not report.kept:
            raise DataError(
                f"{cfg.data.path or cfg.data.source}: no {split} pair is left after the length "
                f"filter (max_len {cfg.data.max_len}): {report}"
            )
    if state.is_main_process:  # the input is good: the settings are the ones training starts on
        claim.store()
        counts = {"train": train_report.counts(), "valid": valid_report.counts()}
        atomic_write_json(out / "data.json", counts)
    log.info("train: %s", train_report)

    mcfg = dataclasses.replace(cfg.model, vocab_size=tok.vocab_size, max_len=cfg.data.max_len)
    torch.manual_seed(cfg.train.seed)
    model = Seq2SeqTransformer(mcfg)
    log.info("teacher: %d parameters", count_parameters(model))
    train_model(cfg, model, teacher_loss, train, valid, out, mcfg.d_model, "teacher")
    model.eval()
    if not state.is_main_process:
        return out  # the main process saves and scores the model (fit kept the copies equal)
    save_model(out, model)

    score_teacher(cfg, out, model, tok, test_pairs, test_report)
    return out
