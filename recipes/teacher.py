"""Train the teacher Transformer, then score it with sacreBLEU on the test split.

    distill run teacher --config demo            # embedded corpus, ~15 min on 2 CPU cores
    distill run teacher --config tiny            # seconds; what the tests run

Writes RUN_DIR/teacher/: config.yaml, spm.model, data.json (length-filter counts), checkpoint/
(resumable), metrics.jsonl, model.json + model.safetensors, test.hyp.txt and bleu.json.
Run it again after an interruption: it continues from the last checkpoint; a finished run is
skipped.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from distill.bleu import evaluate_model
from distill.checkpoint import atomic_write_json, atomic_write_text, read_json
from distill.data import DataConfig, Tokenizer, encode_pairs, load_pairs, spread, token_batches
from distill.errors import DataError
from distill.model import PAD_ID, ModelConfig, Seq2SeqTransformer, count_parameters
from distill.runs import save_model, teacher_dir, write_config
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


def label_smoothed_loss(model, batch, smoothing: float) -> torch.Tensor:
    logits = model(batch.src, batch.tgt_in)  # (B, T, V)
    return F.cross_entropy(
        logits.flatten(0, 1).float(),
        batch.tgt_out.flatten(),
        ignore_index=PAD_ID,
        label_smoothing=smoothing,
    )


def main(cfg: Config) -> Path:
    out = teacher_dir(cfg.run_dir)
    if (out / "bleu.json").exists():
        log.info("teacher already trained: %s (BLEU %s)", out, read_json(out / "bleu.json")["bleu"])
        return out
    # Read every split before writing anything: a bad file fails here, not after training, and
    # leaves no half-made run dir behind.
    train_pairs = load_pairs(cfg.data, "train")
    valid_pairs = load_pairs(cfg.data, "valid")
    test_pairs = load_pairs(cfg.data, "test")
    if not any(s.strip() and t.strip() for s, t in train_pairs):
        raise DataError(f"{cfg.data.path or cfg.data.source}: every train pair has an empty side")
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
    if state.is_main_process:
        counts = {"train": train_report.counts(), "valid": valid_report.counts()}
        atomic_write_json(out / "data.json", counts)
    log.info("train: %s", train_report)

    mcfg = dataclasses.replace(cfg.model, vocab_size=tok.vocab_size, max_len=cfg.data.max_len)
    torch.manual_seed(cfg.train.seed)
    model = Seq2SeqTransformer(mcfg)
    log.info("teacher: %d parameters", count_parameters(model))
    valid_batches = token_batches(valid, cfg.data.batch_tokens, shuffle=False)

    def validate(m) -> dict[str, float]:
        total = tokens = 0.0
        device = next(m.parameters()).device
        for b in valid_batches:
            b = b.to(device)
            total += label_smoothed_loss(m, b, 0.0).item() * b.ntokens
            tokens += b.ntokens
        return {"valid_loss": total / max(tokens, 1)}

    fit(
        model,
        lambda epoch: token_batches(
            train, cfg.data.batch_tokens, shuffle=True, seed=cfg.train.seed, epoch=epoch
        ),
        lambda m, b: label_smoothed_loss(m, b, cfg.label_smoothing),
        cfg.train,
        out,
        d_model=mcfg.d_model,
        desc="teacher",
        validate=validate,
    )
    model.eval()
    if not state.is_main_process:
        return out  # the main process saves and scores the model (fit kept the copies equal)
    save_model(out, model)

    in_range = [test_pairs[i] for i in test_report.kept_indices]
    in_range = spread(in_range, cfg.eval.max_sentences)
    result, hyps = evaluate_model(
        model, tok, in_range, beam=cfg.eval.beam, batch_size=cfg.eval.batch_size, progress=True
    )
    result["test_filter"] = test_report.counts()
    atomic_write_text(out / "test.hyp.txt", "".join(h + "\n" for h in hyps))
    atomic_write_json(out / "bleu.json", result)
    log.info(
        "teacher test BLEU %.2f chrF %.2f (%d sentences, %s)",
        result["bleu"],
        result["chrf"],
        result["n"],
        result["bleu_signature"],
    )
    return out
