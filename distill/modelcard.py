"""The README.md of an export: what was replaced, scores, sizes, and how to load the model."""

from __future__ import annotations

from distill.model import format_count

CARD = """---
language: [{src}, {tgt}]
tags: [translation, distill, attentionless]
library_name: transformers
---
# {name}: {src}→{tgt} translation, variant `{variant}`

A pre-LN encoder-decoder Transformer ({n_enc}+{n_dec} layers, d_model {d_model}, {n_heads} heads,
at most {max_len} tokens per side) trained with `distill` on the `{corpus}` corpus, with
{n_sites} attention site(s) replaced by shallow MLP students trained to mimic them.
{stage_text}

## Replaced sites

| site | mode | size | activation |
|---|---|---|---|
{sites}

## Scores

| test set | BLEU | chrF | sentences/s | decoding |
|---|---:|---:|---:|---|
| {note} | {bleu:.2f} | {chrf:.2f} | {speed:.1f} | {decoding} |
{whole_row}
sacreBLEU signature: `{signature}`.
Speed: sentences per second decoded in that evaluation, on the machine that ran it.
{reproduce}
## Parameters

| | parameters |
|---|---:|
| attention replaced | {replaced} |
| students (effective: weights held at zero by causal masks not counted) | {student} |
| whole model | {total} |

## Use with distill

```bash
distill translate {name} < {src}.txt > {tgt}.txt   # --beam 4; --strict refuses long lines
distill evaluate {name} --source demo
```

```python
import distill

model, tok = distill.from_pretrained("{name}")
print(model.translate(["{sample}"], beam=1))
```

## Use with transformers

The remote code here (`modeling_distill.py`, `configuration_distill.py`) only imports the
`distill` package, so install distill first (`pip install -e .` in its checkout). Sources are
SentencePiece ids followed by EOS ({eos}) and right-padded with {pad}. With the shipped
`generation_config.json`, `generate` returns distill's tokens, greedy or with `num_beams=k`.

```python
import sentencepiece as spm
import torch
from transformers import AutoModelForSeq2SeqLM

model = AutoModelForSeq2SeqLM.from_pretrained("{name}", trust_remote_code=True)
sp = spm.SentencePieceProcessor(model_file="{name}/spm.model")
ids = [sp.encode(s)[:{max_src}] + [{eos}] for s in ["{sample}"]]
width = max(map(len, ids))
src = torch.tensor([x + [{pad}] * (width - len(x)) for x in ids])
out = model.generate(src, attention_mask=(src != {pad}).long(), num_beams=2)
print(sp.decode(out[:, 1:].tolist()))  # EOS and padding ids decode to nothing
```

## Limits

Sources longer than {max_src} tokens plus EOS are truncated (`distill translate --strict` refuses
them); translations stop at {max_len} tokens. Decoding is incremental at every site: the
teacher's attention caches keys and values, each decoder student its own state (the cross
student its memory term once per sentence), in `distill translate` and in `generate` alike.
"""


WHOLE_ROW = (
    "| all {n} pairs of the test split ({truncated} long sources truncated) | {bleu:.2f} "
    "| {chrf:.2f} | {speed:.1f} | greedy |\n"
)

REPRODUCE_DEMO = """
To reproduce the whole-split row with the command line alone:

```bash
corpus=$(python -c 'import distill.demo_corpus as c, os; print(os.path.dirname(c.__file__))')
zcat $corpus/test.tsv.gz | tail -n +2 | cut -f1 > test.de   # skip the header; column 1: German
zcat $corpus/test.tsv.gz | tail -n +2 | cut -f2 > test.en
distill translate {name} < test.de > hyp.en
sacrebleu test.en -i hyp.en -m bleu chrf
```
"""


def model_card(config: dict, row: dict, note: str, name: str, whole: dict | None = None) -> str:
    """README.md for the export ``name`` described by ``config``, scored by ``row`` on ``note``
    and, when given, by ``whole`` on every pair of the test split."""
    src, _, tgt = config["data"]["pair"].partition("-")
    reps, params = config["replacements"], config["parameters"]
    sites = "\n".join(
        f"| `{site}` | {r['mode']} | {r['size']} | {r['activation']} |" for site, r in reps.items()
    )
    beam = row.get("beam", 1)
    tuned = config.get("finetune")
    if config.get("stage") == "tuned" and tuned:
        stage_text = (
            "Stage: **tuned**. After the layer-wise students were spliced in, the finetune stage "
            f"trained {tuned['trainable']} end to end for {tuned['steps']} steps on "
            f"{tuned['sentences']} training sentences: KL to the teacher's next-token "
            f"distributions (weight {tuned['kd_weight']}, temperature {tuned['temperature']}), "
            f"reference cross-entropy (weight {tuned['ce_weight']}), hidden-state MSE (weight "
            f"{tuned['hidden_weight']}); students initialised {tuned['init']}, decoder inputs "
            f"{tuned['targets']} targets, Adam at {tuned['lr']} ({tuned['schedule']})."
        )
    else:
        stage_text = "Stage: **layer-wise** (no fine-tuning after splicing: the paper's protocol)."
    return CARD.format(
        stage_text=stage_text,
        name=name,
        src=src,
        tgt=tgt,
        variant=config["variant"],
        corpus=config["data"]["source"],
        n_sites=len(reps),
        sites=sites or "| (none: this is the teacher) | | | |",
        bleu=row["bleu"],
        chrf=row["chrf"],
        speed=row["sentences_per_s"],
        decoding="greedy" if beam == 1 else f"beam {beam}",
        note=note,
        signature=row["bleu_signature"],
        whole_row=""
        if whole is None
        else WHOLE_ROW.format(
            n=whole["n"],
            truncated=whole["truncated_sources"],
            bleu=whole["bleu"],
            chrf=whole["chrf"],
            speed=whole["sentences_per_s"],
        ),
        reproduce=REPRODUCE_DEMO.format(name=name)
        if whole is not None and config["data"]["source"] == "demo"
        else "",
        replaced=format_count(params["replaced"]),
        student=format_count(params["student"]),
        total=format_count(params["total"]),
        sample="Guten Morgen!" if src == "de" else "Good morning!",
        eos=config["eos_token_id"],
        pad=config["pad_token_id"],
        max_src=config["max_len"] - 1,
        **{k: config[k] for k in ("n_enc", "n_dec", "d_model", "n_heads", "max_len")},
    )
