"""The training loop across stages of one process: each stage may use its own precision."""

import torch

from distill.train import TrainConfig, fit


def test_stages_of_one_process_may_each_use_their_own_precision(tmp_path):
    # The pipeline runs every stage in one process: fp32 students, then a bf16 finetune stage.
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    data = [torch.randn(8, 4) for _ in range(3)]
    seen = []

    def loss(m, batch):
        out = m(batch)
        seen.append(out.dtype)
        return out.float().pow(2).mean()

    for i, precision in enumerate(("no", "bf16", "no")):
        cfg = TrainConfig(epochs=1, schedule="constant", lr=1e-3, mixed_precision=precision)
        state = fit(model, lambda e: data, loss, cfg, tmp_path / str(i), d_model=4, desc="t")
        assert state["step"] == 3
    assert seen == [torch.float32] * 3 + [torch.bfloat16] * 3 + [torch.float32] * 3
