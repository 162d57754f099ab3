"""The ``distill`` command.

    distill ls                                  recipes and their configs
    distill cp RECIPE/CONFIG PATH [--force]     copy a shipped config (YAML) to PATH to edit
    distill run RECIPE --config NAME|FILE.yaml [--redo STAGE] [--print-config] [key=value ...]
    distill evaluate RUN_OR_EXPORT_DIR [--source demo|iwslt2017|FILE] [--beam N] [--device D]
    distill export RUN_DIR [--variant NAME | --spec SITE=MODE,...] --out DIR
    distill translate EXPORT_DIR [--beam N] [--strict|--truncate] [--device D] [FILE|stdin]
    distill --version                           the installed version

Run: ``--config`` takes a shipped config NAME (``distill ls``) or a YAML file of deltas from
the recipe's defaults (``distill cp`` copies a shipped one to edit). ``--redo STAGE`` first
deletes STAGE's output and every later one built on it. ``--print-config`` runs nothing: it
prints the resolved config as YAML, every key (defaults, run_dir), which ``--config FILE.yaml``
loads back as the same config; for the pipeline, each stage section is that stage's whole
config, under ``stages: ''`` (no base config).

Overrides: on ``distill run RECIPE`` a key is a key of that recipe's config (train.epochs=3,
modes=[alr,cross]); on ``distill run pipeline`` it starts with its stage (teacher.train.epochs=3,
students.size=s) or is a pipeline key (online=true, run_dir=DIR).

Bad input (configs, files, arguments) prints one line and exits with code 2; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shutil
import sys
from pathlib import Path

from distill import __version__, progress
from distill.config import available, build, config_path, shipped_config, to_yaml
from distill.errors import ConfigError, DataError, DistillError


def load_recipe_config(recipe: str, name: str, overrides: list[str]):
    """(recipe module, its resolved Config); ``run_dir`` defaults to runs/<config name>."""
    path = config_path(recipe, name)  # an unknown recipe fails here, before its import
    module = importlib.import_module(f"distill_recipes.{recipe}")
    cfg = build(module.Config, path, overrides)
    if hasattr(cfg, "run_dir") and not cfg.run_dir:
        cfg.run_dir = str(Path("runs") / path.stem)
    return module, cfg


def cmd_ls(args) -> int:
    for recipe, configs in available().items():
        print(f"{recipe:10s} {' '.join(configs)}")
    return 0


def cmd_cp(args) -> int:
    recipe, slash, name = args.config.partition("/")
    if not slash:
        raise ConfigError(f"cp: expected RECIPE/CONFIG (e.g. teacher/demo), got '{args.config}'")
    source, dest = shipped_config(recipe, name), Path(args.path)
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists() and not args.force:
        raise ConfigError(f"{dest} exists; --force overwrites it")
    shutil.copyfile(source, dest)
    print(f"distill: wrote {dest}; run it with: distill run {recipe} --config {dest}")
    return 0


def split_redo(args) -> tuple[str, list[str]]:
    """(the --redo target or a ``redo=`` override, the other overrides)."""
    redo = [o.partition("=")[2] for o in args.overrides if o.startswith("redo=")]
    if args.redo and redo and redo != [args.redo]:
        raise ConfigError(f"--redo {args.redo} and redo={redo[-1]} disagree")
    return args.redo or (redo[-1] if redo else ""), [
        o for o in args.overrides if not o.startswith("redo=")
    ]


def cmd_run(args) -> int:
    from distill import stages

    target, overrides = split_redo(args)
    module, cfg = load_recipe_config(args.recipe, args.config, overrides)
    if args.print_config:
        sys.stdout.write(to_yaml(cfg))
        return 0
    if target:  # after the config is known to be good, before anything runs
        allowed = stages.ORDER if args.recipe == "pipeline" else (args.recipe,)
        stages.redo(cfg.run_dir, target, allowed)
    module.main(cfg)
    return 0


def cmd_evaluate(args) -> int:
    from distill_recipes.evaluate import evaluate_path

    evaluate_path(
        args.path,
        source=args.source,
        beam=args.beam,
        pair=args.pair,
        batch_size=args.batch_size,
        max_sentences=args.max_sentences,
        device=args.device,
    )
    return 0


def cmd_export(args) -> int:
    from distill.export import best_variant, export, parse_spec

    if args.spec and args.variant:
        raise ConfigError("give --variant or --spec, not both")
    variant, layer_wise = args.variant, args.layer_wise
    if not args.spec and not variant:
        best = best_variant(args.run_dir, layer_wise)
        stage = best.get("stage", "layer-wise")
        variant, layer_wise = best["variant"], stage != "tuned"
        print(
            f"distill: exporting '{variant}' ({stage}): of the variants that replace every "
            f"attention site, the best by validation BLEU ({best['bleu']:.2f}); --variant NAME "
            "exports another (the rows of RUN_DIR/eval/results-valid.md)",
            file=sys.stderr,
        )
    export(args.run_dir, parse_spec(args.spec) if args.spec else variant, args.out, layer_wise)
    return 0


def read_lines(file: str | None) -> list[str]:
    """Lines of FILE (or stdin when None or "-"), split on newlines only, without their ends."""
    name = "stdin" if file in (None, "-") else file
    try:
        data = sys.stdin.buffer.read() if name == "stdin" else Path(file).read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{name}: cannot read UTF-8 text ({err})") from None
    lines = text.split("\n")
    if lines[-1] == "":  # the final newline ends the last line, it does not start another
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def cmd_translate(args) -> int:
    import time

    from distill.decode import translate_texts
    from distill.pretrained import from_pretrained

    if args.beam < 1 or args.batch_size < 1:
        raise ConfigError("--beam and --batch-size must be >= 1")
    model, tok = from_pretrained(args.path, device=args.device)
    lines = read_lines(args.file)
    long = model.too_long(lines)
    if long:
        where = ", ".join(str(i + 1) for i in long[:5]) + (", ..." if len(long) > 5 else "")
        what = (
            f"{len(long)} line(s) exceed max_len {model.cfg.max_len} tokens with EOS (line {where})"
        )
        if args.strict:
            raise DataError(f"{args.file or 'stdin'}: {what}; shorten or split them")
        if args.truncate:
            print(f"distill: warning: {what}; truncating them", file=sys.stderr)
        else:
            print(
                f"distill: {what}; each is split at sentence or clause ends into parts that fit, "
                "and their translations joined (--truncate cuts them, --strict refuses them)",
                file=sys.stderr,
            )
    started = time.perf_counter()
    how = "truncate" if args.truncate else "split"
    out, _ = translate_texts(model, tok, lines, args.beam, args.batch_size, progress=True, long=how)
    sys.stdout.write("".join(line + "\n" for line in out))
    sys.stdout.flush()
    elapsed = time.perf_counter() - started
    print(f"distill: translated {len(lines)} lines in {elapsed:.2f}s", file=sys.stderr)
    return 0


DEVICE_HELP = "where to decode: auto (a GPU if torch sees one, else the CPU), cpu, cuda, cuda:N"


class _Parser(argparse.ArgumentParser):
    """Argument errors in the one-line form every other error uses (subparsers inherit it)."""

    def error(self, message: str):
        self.exit(2, f"distill: error: {message} (see distill --help)\n")


def _doc(*starts: str) -> str:
    """The paragraphs of this module's docstring that start with ``starts``, as help shows them
    (without reST's double backquotes)."""
    paragraphs = [p for p in __doc__.split("\n\n") if p.strip().startswith(starts)]
    return "\n\n".join(paragraphs).replace("``", "").strip("\n")


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="distill",
        description=_doc("distill ", "Run:", "Overrides:", "Bad input"),
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version=f"distill {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ls", help="list recipes and configs").set_defaults(func=cmd_ls)
    cp = sub.add_parser("cp", help="copy a shipped config to edit")
    cp.add_argument("config", metavar="RECIPE/CONFIG", help="e.g. teacher/demo (see distill ls)")
    cp.add_argument("path", help="the copy (a file, or a folder to copy into)")
    cp.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    cp.set_defaults(func=cmd_cp)
    run = sub.add_parser(
        "run", help="run a recipe", description=_doc("Run:", "Overrides:"), formatter_class=raw
    )
    run.add_argument("recipe")
    run.add_argument("--config", "-c", required=True, help="config name or YAML path")
    run.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=3")
    run.add_argument(
        "--redo",
        default="",
        metavar="STAGE",
        help="delete STAGE's output (or students/MODE, finetune/VARIANT) and every later one "
        "built on it, then run (also: redo=STAGE)",
    )
    run.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as YAML (every key; reloads with --config FILE.yaml) "
        "and exit without running",
    )
    run.set_defaults(func=cmd_run)
    ev = sub.add_parser("evaluate", help="BLEU/chrF of a run dir (every variant) or an export")
    ev.add_argument("path")
    ev.add_argument(
        "--source",
        default="",
        help="demo | iwslt2017 | FILE.tsv (default: the run's corpus)",
    )
    ev.add_argument("--pair", default="")
    ev.add_argument("--max-sentences", type=int, default=0)
    _decoding_options(ev)
    ev.set_defaults(func=cmd_evaluate)
    ex = sub.add_parser("export", help="write one variant of a run as a loadable model dir")
    ex.add_argument("run_dir")
    ex.add_argument(
        "--variant",
        default="",
        help="teacher, alr, ..., attentionless, a hybrid (default: of the variants that replace "
        "every attention site, the one with the best BLEU in RUN_DIR/eval/results-valid.json, "
        "tuned or layer-wise: distill run evaluate ... splits=[valid] writes it)",
    )
    ex.add_argument("--spec", default="", help="SITE=MODE[,SITE=MODE...] instead of a variant")
    ex.add_argument("--out", required=True, help="export directory (replaced if an old export)")
    ex.add_argument(
        "--layer-wise",
        action="store_true",
        help="the layer-wise students even when the finetune stage tuned this variant",
    )
    ex.set_defaults(func=cmd_export)
    tr = sub.add_parser("translate", help="translate lines with an exported model")
    tr.add_argument("path", help="export directory")
    tr.add_argument("file", nargs="?", help="input file, one sentence per line (default: stdin)")
    long = tr.add_mutually_exclusive_group()  # what to do with a line longer than max_len
    long.add_argument(
        "--strict",
        action="store_true",
        help="refuse sources longer than max_len (default: split them into parts that fit)",
    )
    long.add_argument(
        "--truncate",
        action="store_true",
        help="cut sources longer than max_len to fit, dropping their ends (the old behaviour)",
    )
    _decoding_options(tr)
    tr.set_defaults(func=cmd_translate)
    return parser


def _decoding_options(parser: argparse.ArgumentParser) -> None:
    """The decoding options of the commands that translate (evaluate, translate)."""
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def _one_file(extra: list[str]) -> bool:
    """``extra`` is one file name (or ``-``, stdin), not an option argparse did not know."""
    return len(extra) == 1 and (extra[0] == "-" or not extra[0].startswith("-"))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # argparse will not take positionals after an option (`run R --config C k=v`): collect them.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "run" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = args.overrides + extra
    elif args.command == "translate" and args.file is None and _one_file(extra):
        args.file = extra[0]  # `translate EXPORT --beam 4 FILE`: the file after the options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    progress.QUIET = args.quiet
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.func(args)
    except DistillError as err:
        if args.debug:
            raise
        print(f"distill: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # unwritable run dir, full disk, ...: the file and the reason
        if args.debug:
            raise
        print(f"distill: error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distill: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
