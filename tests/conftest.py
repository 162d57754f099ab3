"""Shared fixtures: tiny seeded stand-ins for downloads and trained artifacts."""

import os
import random
from pathlib import Path

import pytest

from distill.cli import main
from distill.data import Tokenizer

# Every stage runs on accelerate's device, a GPU where torch sees one; the suite's equivalences
# are CPU results (tests/test_device.py checks the device placement with a pretend one).
os.environ.setdefault("ACCELERATE_USE_CPU", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One worker per core (`make test`): one thread each, in this process and in the processes
    # its tests start (a test that compares its own run with a subprocess's needs the same
    # count). Two workers of two threads each on two cores run the suite 4x slower, not faster.
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# (German, English) lexicon of a toy grammar: enough variety for a tokenizer, no downloads.
_SUBJECTS = [
    ("der Hund", "the dog"),
    ("die Katze", "the cat"),
    ("der Mann", "the man"),
    ("die Frau", "the woman"),
    ("das Kind", "the child"),
    ("der Vogel", "the bird"),
    ("die Lehrerin", "the teacher"),
    ("der Bäcker", "the baker"),
]
_VERBS = [
    ("sieht", "sees"),
    ("mag", "likes"),
    ("hört", "hears"),
    ("findet", "finds"),
    ("ruft", "calls"),
    ("füttert", "feeds"),
    ("sucht", "looks for"),
]
_OBJECTS = [
    ("den Ball", "the ball"),
    ("einen Apfel", "an apple"),
    ("das Haus", "the house"),
    ("die Straße", "the street"),
    ("ein Buch", "a book"),
    ("den Garten", "the garden"),
]
_ADVERBS = [("", ""), (" heute", " today"), (" oft", " often"), (" nie", " never")]


def make_tiny_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` seeded (German, English) sentence pairs from a toy grammar."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        (sd, se), (vd, ve), (od, oe), (ad, ae) = (
            rng.choice(words) for words in (_SUBJECTS, _VERBS, _OBJECTS, _ADVERBS)
        )
        end = rng.choice(".!?")
        de, en = f"{sd} {vd}{ad} {od}{end}", f"{se}{ae} {ve} {oe}{end}"
        pairs.append((de[0].upper() + de[1:], en[0].upper() + en[1:]))
    return pairs


@pytest.fixture(scope="session", autouse=True)
def hf_modules_cache(tmp_path_factory):
    """One transformers modules cache for the session, out of the home directory: transformers
    copies an export's remote code there, and the relative imports between its files resolve in
    the first cache a process used (a second one breaks them)."""
    import transformers.dynamic_module_utils as dmu

    mp = pytest.MonkeyPatch()
    mp.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path_factory.mktemp("hf_modules")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_pairs() -> list[tuple[str, str]]:
    """300 seeded German-English pairs (data tests; also a corpus for tiny recipes)."""
    return make_tiny_pairs(300)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory, tiny_pairs) -> Tokenizer:
    """A SentencePiece model (under 100 pieces) trained in a few ms on ``tiny_pairs``."""
    texts = [text for pair in tiny_pairs for text in pair]
    return Tokenizer.train(texts, 96, tmp_path_factory.mktemp("tok") / "spm.model")


@pytest.fixture(scope="session")
def layerwise(tmp_path_factory) -> Path:
    """A tiny run dir with a teacher and the layer-wise students of ``attentionless`` (alr,
    dec_self, cross), shared by the finetune and budget tests: copy it before changing it."""
    run = tmp_path_factory.mktemp("layerwise") / "run"
    assert main(["-q", "run", "teacher", "--config", "tiny", f"run_dir={run}"]) == 0
    modes = "modes=[alr,dec_self,cross]"
    argv = ["run", "students", "--config", "tiny", f"run_dir={run}", modes, "source=online"]
    assert main(["-q", *argv]) == 0
    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny pipeline's run dir (`make demo` on the tiny config): every stage, every mode of
    the tiny students config, tuned attentionless and attentionless_gate, both splits scored.
    Read it only; copy it before changing it."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["-q", "run", "pipeline", "--config", "tiny", f"run_dir={run_dir}"]) == 0
    return run_dir
