"""The README.md of an export: what was replaced, scores, sizes, and how to load the model."""

from __future__ import annotations

import dataclasses

from distill.model import FAMILIES, format_count
from distill.modes import GATED_PAIRS, MODES
from distill.runs import trained_text
from distill.students import StudentSpec
from distill.tokenizer import EXPORT_MAX_PIECES

CARD = """---
{front_matter}
---
# {name}: {src}→{tgt} translation, variant `{variant}`

{architecture} ({n_enc}+{n_dec} layers, d_model {d_model}, {n_heads} heads,
at most {max_len} tokens per side) distilled with `distill` on the `{corpus}` corpus, with
{n_sites} attention site(s) replaced by shallow MLP students trained to mimic them.
{attention_text}
{stage_text}

## Replaced sites

{sites}

## Scores

| test set | BLEU | chrF | sentences/s | decoding |
|---|---:|---:|---:|---|
| {note} | {bleu:.2f} | {chrf:.2f} | {speed:.1f} | {decoding} |
{whole_row}
sacreBLEU signature: `{signature}`.
{index_text}
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

```python
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("{name}", trust_remote_code=True)
model = AutoModelForSeq2SeqLM.from_pretrained("{name}", trust_remote_code=True)
batch = tok(["{sample}"], return_tensors="pt", padding=True, truncation=True)
print(tok.batch_decode(model.generate(**batch, num_beams=1), skip_special_tokens=True))
```

{tokenizer_text}: it appends EOS, right-pads, and with `truncation=True` cuts only a source over
{export_max} pieces. `generate` (greedy, or `num_beams=k`) returns the tokens `distill translate`
writes: a source over {max_src} pieces is split into parts as there (see Limits), all parts are
generated in one batch and each source's row joins its parts' tokens; a left-padded batch is
re-padded to the right first. `trust_remote_code=True` runs the modelling code in this folder
(`distill_hf.py` and the `distill_*.py` files it imports: distill's own modules, written when the
model was exported), which needs torch, transformers and sentencepiece, not distill. AutoTokenizer
reads `config.json` too, whose architecture is distill's: without the flag it asks whether to run
that code (the tokenizer loads either way).
To publish: `hf upload <user>/{name} {name}` (huggingface_hub's CLI; needs a network and a
token).

## Limits

A source longer than {max_src} tokens plus EOS is split after sentence ends (`.`, `!`, `?`, ...),
within a sentence still too long after clause ends (`,`, `;`, `:`, ...), else every {max_src}
pieces; neighbouring segments are packed into parts as long as fit, each part is translated without
the others as context and the translations are joined (`distill translate --strict` refuses such
lines, `--truncate` cuts them). Each part's translation stops at {max_len} tokens (`generate`
lowers a larger `max_new_tokens` or `max_length` to that, with a warning).

Decoding is incremental at every site: the teacher's attention caches keys and values, each
decoder student its own state (the cross student its memory term once per sentence), in
`distill translate` and in `generate` alike.
"""


WHOLE_ROW = (
    "| all {n} pairs of the test split ({split} long sources split) | {bleu:.2f} "
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


# corpus -> (Hub dataset id or None, licence of a model trained on it, licence name, link)
CORPORA = {
    "iwslt2017": ("IWSLT/iwslt2017", "cc-by-nc-nd-4.0", None, None),
    "demo": (None, "other", "demo-corpus-licences", "distill/demo_corpus/LICENSES.md"),
}


def filtered_split(config: dict) -> str:
    """The model-index's name of the length-filtered test pairs (what the results row scored): the
    corpus's own ``test`` names every pair, which only the whole-split row scored."""
    return f"test (sources and targets ≤ {config['max_len'] - 1} pieces)"


def front_matter(config: dict, row: dict, name: str, whole: dict | None = None) -> str:
    """The card's YAML metadata (language, licence, library, base model (an imported teacher's Hub
    id), tags, datasets, metrics and a model-index with BLEU and chrF), written by huggingface_hub's
    ``ModelCardData``. The model-index's ``test`` is ``whole`` (every pair of the split, long
    sources split as ``distill translate`` does) when it was scored; ``row`` (the
    length-filtered pairs) is published under its own split name, ``filtered_split``."""
    from huggingface_hub import EvalResult, ModelCardData

    src, _, tgt = config["data"]["pair"].partition("-")
    corpus = config["data"]["source"]
    dataset, licence, licence_name, licence_link = CORPORA.get(corpus, (None, "other", None, None))
    common = dict(
        task_type="translation",
        task_name=f"Translation {src}-{tgt}",
        dataset_type=dataset or corpus,
        dataset_config=f"{src}-{tgt}",
        verified=False,
    )
    scored = [(whole, "test", "")] if whole is not None else []
    scored.append((row, filtered_split(config), " (length-filtered)"))
    results = [
        EvalResult(
            metric_type=metric,
            metric_name=label,
            metric_value=scores[metric],
            metric_config=scores.get(f"{metric}_signature"),  # the sacreBLEU signature
            dataset_name=f"{corpus} {src}-{tgt}{which}",
            dataset_split=split,
            **common,
        )
        for scores, split, which in scored
        for metric, label in (("bleu", "BLEU"), ("chrf", "chrF"))
    ]
    data = ModelCardData(
        language=[src, tgt],
        license=licence,
        license_name=licence_name,
        license_link=licence_link,
        library_name="transformers",
        base_model=config.get("base_model"),  # an imported teacher's Hub id
        pipeline_tag="translation",
        tags=["translation", "distill", *kind_tag(config), config["variant"]],
        datasets=[dataset] if dataset else None,
        metrics=["bleu", "chrf"],
        model_name=name,
        eval_results=results,
    )
    return data.to_yaml()


def gated_sites(config: dict) -> list[str]:
    """The sites of ``config`` (an export's config.json) whose students are gated pairs."""
    return [site for site, kind in config["student_kinds"].items() if kind == GATED_PAIRS]


def kind_tag(config: dict) -> list[str]:
    """``attentionless`` when every attention site holds a student, with ``attention-free`` when
    every student is a mixing one and ``gated-pairs`` when some compare two positions' content;
    ``hybrid`` when students replace some of the attention; nothing for the teacher itself."""
    gated = ["gated-pairs"] if gated_sites(config) else []
    if config["attentionless"]:
        return ["attentionless", *(gated or ["attention-free"])]
    return ["hybrid", *gated] if config["replacements"] else []


# Why a gated-pair student is not called attention-free (docs/pipeline.md, "Two kinds of student").
GATED_TEXT = (
    "{n} site(s) hold gated-pair students ({modes}), which the field calls additive attention "
    "without a softmax (Bahdanau et al. 2015; sigmoid attention, Ramapuram et al. 2024)"
)


def attention_text(config: dict) -> str:
    """Whether the model is attentionless (this project's word: every attention site holds a
    student), whether it is attention-free in the field's sense too (mixing students only), and
    where the teacher's attention is left."""
    gated = gated_sites(config)
    pairs = GATED_TEXT.format(
        n=len(gated),
        modes=", ".join(sorted({f"`{config['replacements'][s]['mode']}`" for s in gated})),
    )
    if config["attentionless"] and not gated:
        return (
            "**Attentionless** (this project's word: every attention site holds a student) and "
            "attention-free in the field's sense too: every student is a mixing one, whose "
            "weights never compare the content of two positions."
        )
    if config["attentionless"]:
        return (
            f"**Attentionless** (this project's word): every attention site replaced; {pairs}. "
            "It is not attention-free in the field's sense."
        )
    left = ", ".join(f"`{site}`" for site in config["teacher_attention"])
    also = f" Of the students, {pairs}." if gated else ""
    hybrid = config.get("hybrid")
    if hybrid:
        kept = ", ".join(f"`{site}`" for site in hybrid["kept"])
        return (
            f"**Hybrid, not attentionless**: the variant `{hybrid['base']}` with the teacher's own "
            f"attention kept at {kept}. Teacher attention is left at: {left}.{also}"
        )
    return f"**Not attentionless**: teacher attention is left at: {left}.{also}"


BLOCK_TEXT = {  # the simplified blocks of "Simplifying Transformer Blocks" (He & Hofmann, 2024)
    "sas": " with SAS blocks (shaped self-attention without skip, values or projections)",
    "sas_p": " with SAS-P blocks (shaped self-attention and MLP in parallel, no skip)",
}
TOKENIZER_TEXT = {
    "sentencepiece": "The tokenizer (`tokenizer.json`) is the SentencePiece model `spm.model` "
    "converted by\ntransformers",
    "marian": "The tokenizer is the teacher's `MarianTokenizer` (source.spm, target.spm) with its\n"
    "`vocab.json` renumbered to distill's special ids (pad 0, unk 1, BOS 2, EOS 3)",
}


def student_table(replacements: dict[str, dict]) -> str:
    """The markdown table of the replaced sites, one column per ``StudentSpec`` field and the
    kind of each student (``distill.modes.KINDS``)."""
    names = [f.name for f in dataclasses.fields(StudentSpec)]
    rows = [f"| site | {' | '.join(names)} | kind |", "|---" * (len(names) + 2) + "|"]
    for site, spec in replacements.items():
        values = StudentSpec.from_dict(spec).to_dict()
        kind = MODES[values["mode"]].kind
        rows.append(f"| `{site}` | {' | '.join(str(values[n]) for n in names)} | {kind} |")
    if not replacements:
        rows.append("| (none: this is the teacher) |" + " |" * (len(names) + 1))
    return "\n".join(rows)


def model_card(config: dict, row: dict, note: str, name: str, whole: dict | None = None) -> str:
    """README.md for the export ``name`` described by ``config``, scored by ``row`` on ``note``
    and, when given, by ``whole`` on every pair of the test split."""
    src, _, tgt = config["data"]["pair"].partition("-")
    reps, params = config["replacements"], config["parameters"]
    sites = student_table(reps)
    beam = row.get("beam", 1)
    tuned = config.get("finetune")
    if config.get("stage") == "tuned" and tuned:
        stage_text = (
            "Stage: **tuned**. After the layer-wise students were spliced in, "
            f"{trained_text(tuned['trainable'])}, end to end for {tuned['steps']} steps on "
            f"{tuned['sentences']} training sentences: KL to the teacher's next-token "
            f"distributions (weight {tuned['kd_weight']}, temperature {tuned['temperature']}), "
            f"reference cross-entropy (weight {tuned['ce_weight']}), hidden-state MSE (weight "
            f"{tuned['hidden_weight']}); students initialised {tuned['init']}, decoder inputs "
            f"{tuned['targets']} targets, Adam at {tuned['lr']} ({tuned['schedule']})."
        )
    else:
        stage_text = "Stage: **layer-wise** (no fine-tuning after splicing: the paper's protocol)."
    return CARD.format(
        front_matter=front_matter(config, row, name, whole),
        stage_text=stage_text,
        attention_text=attention_text(config),
        name=name,
        src=src,
        tgt=tgt,
        variant=config["variant"],
        corpus=config["data"]["source"],
        n_sites=len(reps),
        sites=sites,
        bleu=row["bleu"],
        chrf=row["chrf"],
        speed=row["sentences_per_s"],
        decoding="greedy" if beam == 1 else f"beam {beam}",
        note=note,
        signature=row["bleu_signature"],
        index_text=(
            "In the Hub metadata (model-index), `test` is the row of all pairs; the first row is "
            f"`{filtered_split(config)}`."
            if whole is not None
            else f"In the Hub metadata (model-index) this row is `{filtered_split(config)}`: "
            "the whole test split was not scored."
        ),
        whole_row=""
        if whole is None
        else WHOLE_ROW.format(
            n=whole["n"],
            split=whole["split_sources"],
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
        export_max=EXPORT_MAX_PIECES,
        architecture=FAMILIES[config["family"]].card.format(norm=config["norm"])
        + BLOCK_TEXT.get(config["block"], ""),
        tokenizer_text=TOKENIZER_TEXT[config["tokenizer"]["type"]],
        **{k: config[k] for k in ("n_enc", "n_dec", "d_model", "n_heads", "max_len")},
    )
