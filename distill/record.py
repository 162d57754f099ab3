"""Record what the teacher's sites see and produce, to disk shards or straight into training.

Sentences are put in one fixed order (sorted by source then target length) and cut into *shards*
of ``shard_size`` sentences; a shard is cut into student batches of ``batch_size`` sentences.
Disk and online mode build exactly the same batches: disk mode reads them from the shard files,
online mode recomputes them with teacher forward passes. Each epoch visits the shards in a seeded
order and the batches inside a shard in a seeded order, so a reader never holds more than one
shard in memory.

A shard file holds, per site, ``{site}.x`` and ``{site}.y``: the site's input and output of every
sentence, trimmed to its true length and concatenated along tokens (N_tokens, D); plus
``src_len``/``tgt_len`` (n,) and, when a recorded site reads it (its row in ``distill.model.SITES``
says so), the encoder ``memory``.
``manifest.json`` (written last, atomically) lists sites, dims, dtype and each shard's sentence
count and sha256.

Dimension letters: B sentences in a batch, L padded length, D d_model, N tokens in a shard.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from distill.activations import ActBatch, padding_masks, reads_memory, site_hooks, site_io
from distill.checkpoint import atomic_write_json, load_tensors, read_json, save_tensors
from distill.errors import DataError
from distill.formats import current_site
from distill.model import Seq2SeqTransformer, site_info, site_path, site_stack
from distill.students import splice, unsplice
from distill.train import process_state

log = logging.getLogger(__name__)
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
MANIFEST_VERSION = 1


def sentence_order(examples: Sequence[tuple[list[int], list[int]]]) -> list[int]:
    """The one order in which sentences are recorded: by (source length, target length)."""
    return sorted(range(len(examples)), key=lambda i: (len(examples[i][0]), len(examples[i][1])))


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def epoch_plan(shard_sizes: list[int], batch_size: int, seed: int, epoch: int) -> list[tuple]:
    """[(shard, start, end)] of an epoch: shards in a seeded order, batches shuffled per shard."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    plan = []
    for s in torch.randperm(len(shard_sizes), generator=g).tolist():
        parts = chunks(shard_sizes[s], batch_size)
        plan += [(s, *parts[j]) for j in torch.randperm(len(parts), generator=g).tolist()]
    return plan


@torch.no_grad()
def capture(
    model: Seq2SeqTransformer, sites: list[str], src: torch.Tensor, tgt_in: torch.Tensor
) -> ActBatch:
    """One teacher-forced forward pass with hooks: what every site received and returned, the
    masks, and the encoder memory when a site reads it."""
    with site_hooks(model, sites) as got:
        memory, memory_mask = model.encode(src)
        if any(site_stack(s) == "decoder" for s in sites):
            model.decode(tgt_in, memory, memory_mask)
    got.update(padding_masks(src, tgt_in))
    if reads_memory(sites):
        got["memory"] = memory
    return ActBatch(got)


def _collate(examples, idx: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    from distill.data import collate

    batch = collate([examples[i] for i in idx], idx).to(device)
    return batch.src, batch.tgt_in


def _trim(batch: ActBatch, sites: list[str], dtype) -> dict[str, torch.Tensor]:
    """Padded (B, L, D) activations -> concatenated true-length tokens (N, D) per tensor."""
    src_mask, tgt_mask = batch["src_mask"], batch["tgt_mask"]
    out = {"src_len": src_mask.sum(1).int(), "tgt_len": tgt_mask.sum(1).int()}
    for site in sites:
        io = site_io(batch, site)
        for part, values, what in (("x", io.x, "input"), ("y", io.y, "output")):
            where = f"site '{site}': the teacher's {what}"
            out[f"{site}.{part}"] = _finite(values[io.mask], dtype, where)
    if "memory" in batch.tensors:
        out["memory"] = _finite(batch["memory"][src_mask], dtype, "the encoder memory")
    return out


def _finite(values: torch.Tensor, dtype, what: str) -> torch.Tensor:
    """``values`` cast to ``dtype``; ``DataError`` if any is NaN/inf (students cannot learn from
    those), e.g. a teacher whose activations overflow fp16."""
    cast = values.to(dtype)
    if not cast.isfinite().all():
        if values.isfinite().all():
            name = next(k for k, v in DTYPES.items() if v == dtype)
            top = values.abs().max().item()
            raise DataError(f"{what} (up to {top:.3g}) overflows {name}; record with dtype=fp32")
        raise DataError(f"{what} is NaN/inf; the teacher itself is broken")
    return cast


def _pad(flat: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """(N, D) concatenated tokens -> (B, max(lengths), D) zero-padded."""
    return torch.nn.utils.rnn.pad_sequence(list(flat.split(lengths)), batch_first=True)


def bytes_per_sentence_token(sites: list[str], d_model: int, dtype: str) -> dict[str, int]:
    """Bytes written per source token and per target token."""
    size = torch.finfo(DTYPES[dtype]).bits // 8
    enc = sum(site_info(s).mask == "source" for s in sites) * 2
    dec = sum(site_info(s).mask == "target" for s in sites) * 2
    mem = 1 if reads_memory(sites) else 0
    return {"src": (enc + mem) * d_model * size, "tgt": dec * d_model * size}


def estimate_bytes(examples, sites: list[str], d_model: int, dtype: str) -> int:
    per = bytes_per_sentence_token(sites, d_model, dtype)
    src = sum(len(s) for s, _ in examples)
    tgt = sum(len(t) + 1 for _, t in examples)
    return src * per["src"] + tgt * per["tgt"]


def record(
    model: Seq2SeqTransformer,
    examples,
    sites: list[str],
    out: Path,
    *,
    shard_size: int = 1000,
    dtype: str = "fp16",
    batch_size: int = 100,
    progress: bool = True,
    targets: str = "reference",
) -> dict:
    """Write shards + manifest for ``examples`` under ``out``; resumes keeping every good shard.

    ``targets`` says what the examples' targets are ("reference" or "teacher" decodes, see
    ``distill.prefixes``); it goes into the manifest. Refuses (DataError) when the estimated size
    does not fit the free disk.
    """
    if dtype not in DTYPES:
        raise DataError(f"record dtype must be fp16 or fp32, got '{dtype}'")
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    _check_disk(out, examples, sites, model.cfg.d_model, dtype)
    order = sentence_order(examples)
    plan = chunks(len(order), shard_size)
    header = {
        "version": MANIFEST_VERSION,
        "sites": sites,
        "d_model": model.cfg.d_model,
        "max_len": model.cfg.max_len,
        "dtype": dtype,
        "shard_size": shard_size,
        "sentences": len(order),
        "targets": targets,
    }
    final = out / "manifest.json"
    if final.exists():
        manifest = read_json(final)
        if isinstance(manifest, dict) and _same_header(manifest, header):
            log.info("recording already complete: %s", final)
            return manifest
    # Several processes (accelerate launch) share the shards: each records every world-th shard
    # still missing and lists it in its own partial manifest; the main process writes the final
    # manifest. A resumed run, under any number of processes, keeps every listed shard whose
    # checksum holds.
    state = process_state()
    world, rank = state.num_processes, state.process_index
    if state.is_main_process:
        final.unlink(missing_ok=True)  # its shards are about to be overwritten
        for stale in out.glob(".*.tmp"):  # a temp file a kill left mid-write: useless
            stale.unlink()
    state.wait_for_everyone()
    done = _listed_shards(out, header)
    state.wait_for_everyone()  # everyone has read the partial manifests before any is rewritten
    if done:
        log.info("resuming recording after %d of %d shards", len(done), len(plan))
    mine = [i for i in range(len(plan)) if i not in done][rank::world]
    if world > 1:
        log.info("process %d of %d: recording %d of %d shards", rank, world, len(mine), len(plan))
    partial = out / ("manifest.partial.json" if rank == 0 else f"manifest.partial.{rank}.json")
    listed = list(done.values()) if rank == 0 else []
    shard = _ShardWriter(model, examples, sites, out, order, DTYPES[dtype], batch_size)
    # A context manager closes the bar on errors too, so the CLI's error line starts a line.
    with _bar(
        sum(plan[i][1] - plan[i][0] for i in mine), progress and state.is_local_main_process
    ) as bar:
        for index in mine:
            listed.append(shard.write(index, *plan[index], bar))
            atomic_write_json(partial, {**header, "shards": listed})
    state.wait_for_everyone()
    if state.is_main_process:
        _finish_manifest(out, header, len(plan))
    state.wait_for_everyone()
    return read_json(final)


def _bar(total: int, show: bool):
    from distill.progress import progress_bar

    return progress_bar(total=total, desc="record", unit="sent", show=show, dynamic_ncols=True)


def _check_disk(out: Path, examples, sites: list[str], d_model: int, dtype: str) -> None:
    """Refuse (DataError) a recording whose estimated size does not fit the free disk."""
    need = estimate_bytes(examples, sites, d_model, dtype)
    free = shutil.disk_usage(out).free
    log.info(
        "recording %d sentences x %d sites: about %.1f MB (%.1f GB free)",
        len(examples),
        len(sites),
        need / 1e6,
        free / 1e9,
    )
    if need > free * 0.95:
        raise DataError(
            f"{out}: recording needs about {need / 1e9:.2f} GB, only "
            f"{free / 1e9:.2f} GB free; record fewer sentences or sites, or use fp16"
        )


class _ShardWriter:
    """Records one shard: the teacher's activations at ``sites`` for its sentences, in
    batches of ``batch_size``, trimmed to the real positions and saved with a checksum."""

    def __init__(self, model, examples, sites, out: Path, order, dtype, batch_size: int):
        self.model, self.examples, self.sites, self.out = model, examples, sites, out
        self.order, self.dtype, self.batch_size = order, dtype, batch_size
        self.device = next(model.parameters()).device

    def write(self, index: int, a: int, b: int, bar) -> dict:
        """Shard ``index`` (sentences order[a:b]); returns its manifest entry."""
        parts: list[dict[str, torch.Tensor]] = []
        for c0, c1 in chunks(b - a, self.batch_size):
            idx = self.order[a + c0 : a + c1]
            acts = capture(self.model, self.sites, *_collate(self.examples, idx, self.device))
            parts.append(_trim(acts, self.sites, self.dtype))
            bar.update(len(idx))
        tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        tensors["sentence"] = torch.tensor(self.order[a:b], dtype=torch.int64)
        name = f"shard-{index:05d}.safetensors"
        save_tensors(self.out / name, tensors)
        size = (self.out / name).stat().st_size
        sha = _sha256(self.out / name)
        return {"index": index, "file": name, "sentences": b - a, "bytes": size, "sha256": sha}


def _finish_manifest(out: Path, header: dict, n_shards: int) -> None:
    """The final manifest from the partial ones (every shard must be listed), which go."""
    shards = _listed_shards(out, header)
    missing = [i for i in range(n_shards) if i not in shards]
    if missing:
        raise DataError(f"{out}: shards {missing} were not recorded; run the stage again")
    shards = [shards[i] for i in range(n_shards)]
    manifest = {**header, "shards": shards, "bytes": sum(s["bytes"] for s in shards)}
    atomic_write_json(out / "manifest.json", manifest)
    for path in out.glob("manifest.partial*.json"):
        path.unlink()


def _listed_shards(out: Path, header: dict) -> dict[int, dict]:
    """Shard index -> its entry, for every shard a partial manifest of this header lists and
    whose file still has the listed checksum."""
    found: dict[int, dict] = {}
    for path in sorted(out.glob("manifest.partial*.json")):
        old = read_json(path)
        if not (isinstance(old, dict) and _same_header(old, header)):
            continue
        for shard in old.get("shards", []):
            if shard["index"] not in found and _sha256(out / shard["file"]) == shard["sha256"]:
                found[shard["index"]] = shard
    return found


def _same_header(found: dict, header: dict) -> bool:
    """Whether a manifest on disk was written for this header (recordings made before the
    ``targets`` key were made on reference targets)."""
    return {k: found.get(k, "reference" if k == "targets" else None) for k in header} == header


def _sha256(path: Path) -> str | None:
    if not path.exists():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Recording:
    """A finished recording on disk, read one shard at a time (checksum verified on first load)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        if not mpath.exists():
            hint = (
                " (recording unfinished: run it again)"
                if (self.path / "manifest.partial.json").exists()
                else ""
            )
            raise DataError(f"{mpath}: recording manifest not found{hint}")
        self.manifest = read_json(mpath)
        for key in ("sites", "d_model", "dtype", "shards", "max_len"):
            if not isinstance(self.manifest, dict) or key not in self.manifest:
                raise DataError(f"{mpath}: manifest has no '{key}'")
        if self.manifest["dtype"] not in DTYPES:
            raise DataError(f"{mpath}: unknown dtype '{self.manifest['dtype']}'")
        for i, shard in enumerate(self.manifest["shards"]):
            if not isinstance(shard, dict) or not {"file", "sentences", "sha256"} <= set(shard):
                raise DataError(f"{mpath}: shard entry {i} lacks file/sentences/sha256")
        self.manifest["sites"] = [current_site(s) for s in self.manifest["sites"]]
        self._verified: set[int] = set()
        self._cache: tuple[int, dict] | None = None

    @property
    def sites(self) -> list[str]:
        return self.manifest["sites"]

    @property
    def targets(self) -> str:
        """What the decoder was teacher-forced on; recordings older than the key: reference."""
        return self.manifest.get("targets", "reference")

    @property
    def shard_sizes(self) -> list[int]:
        return [s["sentences"] for s in self.manifest["shards"]]

    def check_compatible(self, model_cfg, sites: list[str]) -> None:
        """DataError naming what differs between this recording and a teacher / wanted sites."""
        m = self.manifest
        if m["d_model"] != model_cfg.d_model or m["max_len"] != model_cfg.max_len:
            raise DataError(
                f"{self.path}: recorded with d_model {m['d_model']}, max_len "
                f"{m['max_len']}; the teacher has {model_cfg.d_model}, "
                f"{model_cfg.max_len}"
            )
        missing = [s for s in sites if s not in m["sites"]]
        if missing:
            raise DataError(
                f"{self.path}: site '{missing[0]}' was not recorded "
                f"(recorded: {', '.join(m['sites'])})"
            )

    def verify(self) -> None:
        """Check every shard now (file, sha256, dtype), so a bad recording fails before training
        starts rather than when the epoch reaches it; ``DataError`` names the first bad shard."""
        for index in range(len(self.manifest["shards"])):
            self._check(index)

    def _check(self, index: int) -> None:
        if index in self._verified:
            return
        info = self.manifest["shards"][index]
        path = self.path / info["file"]
        if not path.is_file():
            raise DataError(f"{path}: shard file missing; delete the recording and record again")
        if _sha256(path) != info["sha256"]:
            raise DataError(
                f"{path}: checksum mismatch (corrupt or truncated shard); "
                "delete the recording and record again"
            )
        want = {"fp16": "F16", "fp32": "F32"}[self.manifest["dtype"]]
        try:
            with safe_open(path, "pt") as f:
                dtypes = {key: f.get_slice(key).get_dtype() for key in f.keys()}
        except (SafetensorError, OSError) as err:
            raise DataError(f"{path}: not a readable safetensors file ({err})") from None
        for key, found in dtypes.items():
            if found.startswith(("F", "BF")) and found != want:
                raise DataError(
                    f"{path}: tensor '{key}' is {found}, the manifest says "
                    f"{self.manifest['dtype']} (shards of two recordings mixed?)"
                )
        self._verified.add(index)

    def shard(self, index: int) -> dict[str, torch.Tensor]:
        if self._cache and self._cache[0] == index:
            return self._cache[1]
        self._check(index)
        tensors = load_tensors(self.path / self.manifest["shards"][index]["file"])
        tensors = {current_site(key): value for key, value in tensors.items()}  # older formats
        self._cache = (index, tensors)
        return tensors

    def batch(self, index: int, start: int, end: int, sites: list[str]) -> ActBatch:
        """Sentences [start, end) of shard ``index`` as a padded fp32 batch."""
        t = self.shard(index)
        src_len, tgt_len = t["src_len"].tolist(), t["tgt_len"].tolist()
        s0, s1 = sum(src_len[:start]), sum(src_len[:end])
        t0, t1 = sum(tgt_len[:start]), sum(tgt_len[:end])
        ls, lt = src_len[start:end], tgt_len[start:end]
        out = {
            "src_mask": _pad(torch.ones(s1 - s0, 1), ls)[..., 0].bool(),
            "tgt_mask": _pad(torch.ones(t1 - t0, 1), lt)[..., 0].bool(),
        }
        spans = {"source": (s0, s1, ls), "target": (t0, t1, lt)}
        for site in sites:
            a, b, lens = spans[site_info(site).mask]
            for part in ("x", "y"):
                out[f"{site}.{part}"] = _pad(t[f"{site}.{part}"][a:b].float(), lens)
        if "memory" in t and reads_memory(sites):
            out["memory"] = _pad(t["memory"][s0:s1].float(), ls)
        return ActBatch(out)


class DiskBatches(Sequence):
    """The batches of one epoch, read lazily from a ``Recording``."""

    def __init__(self, rec: Recording, sites: list[str], batch_size: int, seed: int, epoch: int):
        self.rec, self.sites = rec, sites
        self.plan = epoch_plan(rec.shard_sizes, batch_size, seed, epoch)

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> ActBatch:
        return self.rec.batch(*self.plan[i], self.sites)


def sites_overlap(a: str, b: str) -> bool:
    """Whether sites ``a`` and ``b`` are one module or one holds the other (``encoder.0``
    holds ``encoder.0.self_attn``): splicing a student at one removes or hides the other."""
    pa, pb = site_path(a), site_path(b)
    return pa == pb or pa.startswith(pb + ".") or pb.startswith(pa + ".")


class OnlineBatches(Sequence):
    """The same batches as ``DiskBatches``, computed by teacher forward passes (no disk).

    ``students`` ({site: module}) are spliced into ``model`` for each pass (and taken out after):
    the recorded sites then see what those students produce upstream of them (progressive
    training), and their outputs stay what the teacher's own modules compute on that input. A
    recorded site may not be one of them (its hook would record a student, not the teacher).
    """

    def __init__(
        self,
        model: Seq2SeqTransformer,
        examples,
        sites: list[str],
        *,
        shard_size: int,
        batch_size: int,
        seed: int,
        epoch: int,
        students: dict[str, torch.nn.Module] | None = None,
    ):
        self.model, self.examples, self.sites = model.eval(), examples, sites
        self.students = {s: m.eval() for s, m in (students or {}).items()}
        for site in sites:
            for other in self.students:
                if sites_overlap(site, other):
                    raise ValueError(f"site '{site}' is recorded but '{other}' holds a student")
        self.order = sentence_order(examples)
        sizes = [b - a for a, b in chunks(len(self.order), shard_size)]
        self.shard_size = shard_size
        self.plan = epoch_plan(sizes, batch_size, seed, epoch)

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> ActBatch:
        s, a, b = self.plan[i]
        base = s * self.shard_size
        idx = self.order[base + a : base + b]
        device = next(self.model.parameters()).device
        previous = splice(self.model, self.students)
        try:
            batch = capture(self.model, self.sites, *_collate(self.examples, idx, device))
        finally:
            unsplice(self.model, previous)
        keep = ["src_mask", "tgt_mask", "memory"] + [f"{s}.{p}" for s in self.sites for p in "xy"]
        # Activations in fp32 and masks bool, as DiskBatches gives them.
        return ActBatch(
            {
                k: v if v.dtype == torch.bool else v.float()
                for k, v in batch.tensors.items()
                if k in keep
            }
        )
