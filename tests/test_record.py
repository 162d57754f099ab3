"""Recording: replay fidelity, online == disk, learning from a recording, corrupt shards."""

import json

import pytest
import torch

from distill.activations import site_io
from distill.errors import DataError
from distill.losses import mode_loss, site_loss
from distill.model import EOS_ID, PRESETS, ModelConfig, Site
from distill.model import SITES as SITE_TABLE
from distill.modes import MIXING, MODES, Mode, mode_sites, recorded_sites
from distill.record import (
    DiskBatches,
    OnlineBatches,
    Recording,
    bytes_per_sentence_token,
    capture,
    record,
)
from distill.students import build_student
from distill.train import TrainConfig, fit
from tests.helpers import tiny_teacher

CFG = ModelConfig(**PRESETS["unit"])
SITES = [
    "encoder.0.self_attn",
    "encoder.1.self_attn_sublayer",
    "encoder.1",
    "decoder.0.self_attn",
    "decoder.1.cross_attn",
]


def examples(n: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ls, lt = torch.randint(1, CFG.max_len, (2,), generator=g).tolist()
        src = torch.randint(4, CFG.vocab_size, (ls,), generator=g).tolist() + [EOS_ID]
        out.append((src, torch.randint(4, CFG.vocab_size, (lt,), generator=g).tolist()))
    return out


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    model, ex = tiny_teacher(), examples()
    root = tmp_path_factory.mktemp("rec")
    for dtype in ("fp32", "fp16"):
        record(
            model, ex, SITES, root / dtype, shard_size=16, dtype=dtype, batch_size=5, progress=False
        )
    return model, ex, root


def live_batch(model, ex, idx):
    from distill.data import collate

    b = collate([ex[i] for i in idx], idx)
    return capture(model, SITES, b.src, b.tgt_in)


def test_recorded_tensors_equal_live_activations(recorded):
    model, ex, root = recorded
    rec32, rec16 = Recording(root / "fp32"), Recording(root / "fp16")
    shard = rec32.shard(0)
    idx = shard["sentence"][:4].tolist()
    live = live_batch(model, ex, idx)
    a32, a16 = rec32.batch(0, 0, 4, SITES), rec16.batch(0, 0, 4, SITES)
    for site in SITES:
        mask = live["src_mask"] if site.startswith("encoder") else live["tgt_mask"]
        for part in "xy":
            want = live[f"{site}.{part}"][mask]
            torch.testing.assert_close(a32[f"{site}.{part}"][mask], want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a16[f"{site}.{part}"][mask], want, atol=2e-2, rtol=2e-3)
            assert torch.equal(
                a32[f"{site}.{part}"][~mask], torch.zeros_like(a32[f"{site}.{part}"][~mask])
            )


def test_manifest_describes_the_shards(recorded):
    _, ex, root = recorded
    manifest = json.loads((root / "fp16" / "manifest.json").read_text())
    assert manifest["sites"] == SITES and manifest["dtype"] == "fp16"
    assert sum(s["sentences"] for s in manifest["shards"]) == len(ex)
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])
    assert manifest["bytes"] < sum(
        s["bytes"] for s in json.loads((root / "fp32" / "manifest.json").read_text())["shards"]
    )


@pytest.mark.parametrize("mode", ["alr", "dec_self", "dec_self_pp", "cross"])
def test_online_and_disk_give_the_same_first_batch_loss(recorded, mode):
    model, ex, root = recorded
    sites = [s for s in mode_sites(mode, CFG) if s in SITES]
    torch.manual_seed(0)
    students = torch.nn.ModuleDict(
        {s.replace(".", "/"): build_student(mode, CFG, "xs") for s in sites}
    )
    disk = DiskBatches(Recording(root / "fp32"), sites, 8, seed=3, epoch=1)
    online = OnlineBatches(model, ex, sites, shard_size=16, batch_size=8, seed=3, epoch=1)
    assert len(disk) == len(online)
    dtypes = [{k: v.dtype for k, v in batch.tensors.items()} for batch in (disk[0], online[0])]
    assert dtypes[0] == dtypes[1]  # masks are bool in both
    torch.manual_seed(1)  # the per-position student draws random prefixes: the same ones
    a = mode_loss(students, sites, disk[0])
    torch.manual_seed(1)
    b = mode_loss(students, sites, online[0])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_student_trained_on_a_tiny_recording_cuts_its_mse_tenfold(recorded, tmp_path):
    model, ex, root = recorded
    site = "encoder.0.self_attn"
    rec = Recording(root / "fp32")
    torch.manual_seed(0)
    student = build_student("alr", CFG, "m")
    batch = rec.batch(0, 0, 16, [site])
    before = site_loss(student, site, batch).item()
    cfg = TrainConfig(epochs=60, schedule="constant", lr=1e-3, log_every=50, ckpt_every=1000)
    fit(
        student,
        lambda e: DiskBatches(rec, [site], 16, 0, e),
        lambda m, b: site_loss(m, site, b),
        cfg,
        tmp_path,
        d_model=CFG.d_model,
        desc="test",
    )
    assert site_loss(student.eval(), site, batch).item() < before / 10


def test_a_corrupt_shard_is_named(recorded, tmp_path):
    import shutil

    _, _, root = recorded
    copy = tmp_path / "rec"
    shutil.copytree(root / "fp16", copy)
    shard = copy / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    rec = Recording(copy)
    with pytest.raises(DataError, match="shard-00001.safetensors: checksum mismatch"):
        rec.batch(1, 0, 2, SITES)
    (copy / "manifest.json").unlink()
    with pytest.raises(DataError, match="manifest.json: recording manifest not found"):
        Recording(copy)


def test_recording_refuses_a_teacher_of_other_dimensions(recorded):
    _, _, root = recorded
    other = ModelConfig(**{**PRESETS["unit"], "d_model": 32})
    with pytest.raises(DataError, match="recorded with d_model 16"):
        Recording(root / "fp16").check_compatible(other, SITES)
    with pytest.raises(DataError, match="site 'encoder.1.self_attn' was not recorded"):
        Recording(root / "fp16").check_compatible(CFG, ["encoder.1.self_attn"])


def test_online_batches_with_students_spliced_see_their_outputs_and_leave_the_teacher_alone():
    from distill.data import collate
    from distill.model import site_path
    from distill.students import splice

    model, ex = tiny_teacher(), examples()
    torch.manual_seed(0)
    early = {s: build_student("alr", CFG, "xs") for s in mode_sites("alr", CFG)}
    before = {s: model.get_submodule(site_path(s, CFG)) for s in early}
    site = "decoder.1.cross_attn"  # behind the encoder students, via decoder.0.cross_attn
    online = OnlineBatches(model, ex, [site], shard_size=16, batch_size=8, seed=3, epoch=0)
    shifted = OnlineBatches(
        model, ex, [site], shard_size=16, batch_size=8, seed=3, epoch=0, students=early
    )
    got, own = shifted[0], online[0]
    assert all(model.get_submodule(site_path(s, CFG)) is m for s, m in before.items())
    s, a, b = shifted.plan[0]
    idx = shifted.order[s * 16 + a : s * 16 + b]
    batch = collate([ex[i] for i in idx], idx)
    splice(model, early)
    want = capture(model, [site], batch.src, batch.tgt_in)
    for key in (f"{site}.x", f"{site}.y", "memory"):
        assert torch.equal(got[key], want[key])
        assert not torch.allclose(got[key], own[key])
    with pytest.raises(ValueError, match="'encoder.1' is recorded but 'encoder.1.self_attn'"):
        OnlineBatches(
            model, ex, ["encoder.1"], shard_size=16, batch_size=8, seed=3, epoch=0, students=early
        )


def test_a_site_that_reads_the_memory_is_recorded_with_it_whatever_its_name(tmp_path, monkeypatch):
    # The decoder's whole cross-attention sublayer, called as (y, mask, memory, memory_mask): a
    # site the table could have, not named cross_attn, and a mode whose students read the memory.
    monkeypatch.setitem(
        SITE_TABLE,
        ("decoder", "cross_attn_sublayer"),
        Site("cross_attn_sublayer", "target", memory=True),
    )
    site = "decoder.{i}.cross_attn_sublayer"
    mode = Mode("cross_sub", site, "decoder", causal=True, memory=True, kind=MIXING)
    monkeypatch.setitem(MODES, "cross_sub", mode)
    model, ex = tiny_teacher(), examples()
    sites = recorded_sites(["cross_sub"], CFG)
    assert sites == ["decoder.0.cross_attn_sublayer", "decoder.1.cross_attn_sublayer"]
    assert bytes_per_sentence_token(sites, CFG.d_model, "fp32")["src"] == CFG.d_model * 4
    record(model, ex, sites, tmp_path, shard_size=16, dtype="fp32", batch_size=5, progress=False)
    assert "memory" in Recording(tmp_path).shard(0)
    disk = DiskBatches(Recording(tmp_path), sites, 8, seed=3, epoch=1)[0]
    online = OnlineBatches(model, ex, sites, shard_size=16, batch_size=8, seed=3, epoch=1)[0]
    for batch in (disk, online):
        for site in sites:
            io = site_io(batch, site)
            assert io.memory is not None and io.memory.abs().sum() > 0
            assert torch.equal(io.memory_mask, batch["src_mask"])
    real = online["src_mask"]  # the shards keep the real positions only
    torch.testing.assert_close(disk["memory"][real], online["memory"][real], atol=1e-5, rtol=1e-5)
    torch.manual_seed(0)
    students = torch.nn.ModuleDict(
        {s.replace(".", "/"): build_student("cross_sub", CFG, "xs") for s in sites}
    )
    assert all(s.memory_fc is not None for s in students.values())  # they do read it
    torch.testing.assert_close(
        mode_loss(students, sites, disk), mode_loss(students, sites, online), atol=1e-5, rtol=1e-5
    )
