"""The results table (eval/report.py): what a row's columns and the notes under it say."""

from distill_eval.report import write_markdown


def row(variant: str, stage: str, kinds: str, trainable: str = "") -> dict:
    return {
        "variant": variant,
        "stage": stage,
        "students": "",
        "kinds": kinds,
        "trainable": trainable,
        "sites": [],
        "params_replaced": 0,
        "params_student": 0,
        "bleu": 1.0,
        "chrf": 2.0,
        "sentences_per_s": 3.0,
        "bleu_signature": "nrefs:1",
    }


def test_the_table_names_the_kinds_and_what_each_tuned_row_retrained():
    rows = [
        row("teacher", "", ""),
        row("attentionless", "layer-wise", "mixing"),
        row("attentionless_gate", "tuned", "mixing + gated pairs", "all"),
        row("cross_gate", "tuned", "gated pairs", "all"),
        row("dec_self", "tuned", "mixing", "students"),
    ]
    table = write_markdown({"note": "demo test", "beam": 1, "rows": rows})
    lines = table.splitlines()
    assert lines[0].startswith("| variant | stage | students | kinds | BLEU |")
    assert lines[4].startswith("| attentionless_gate | tuned |  | mixing + gated pairs | 1.00 |")
    # "tuned" must not hide that the finetune stage moved the teacher's own weights
    assert (
        "Tuned attentionless_gate, cross_gate: the finetune stage trained every weight, the "
        "teacher's included (`trainable: all`)." in lines
    )
    assert (
        "Tuned dec_self: the finetune stage trained the students alone, every teacher weight "
        "kept as it was (`trainable: students`)." in lines
    )
    assert any(line.startswith("Kinds: mixing = no weight compares") for line in lines)
    layer_wise = write_markdown({"note": "demo test", "beam": 1, "rows": rows[:2]})
    assert "Tuned" not in layer_wise
