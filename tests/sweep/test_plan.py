"""Sizing a sweep: forward-pass counts, memory, calibration and the cannot-fit error (tiny models)."""

from __future__ import annotations

import pytest
import torch

from cortexmap.errors import CortexmapError
from cortexmap.sweep.config import SweepConfig
from cortexmap.sweep.plan import (
    ModelFacts,
    auto_rows,
    bytes_per_row,
    calibrate,
    forward_equivalents,
    plan_run,
    require_fit,
)
from tests.tiny import _config, tiny_handle

GB = 10**9



def cfg(n_prompts: int, interventions: list[str] = ["zero"], method: str = "exact", verify: int = 0) -> SweepConfig:  # noqa: B006
    return SweepConfig(n_prompts=n_prompts, interventions=interventions, method=method, verify=verify)

def test_forward_equivalents_count_the_depth_each_head_reruns() -> None:
    # heads at layers 0, 1, 2 of 3 run 3, 2, 1 blocks: 4 heads * 6 / 3 = 8 passes, plus the clean pass
    assert forward_equivalents(3, 4, 32, 256) == pytest.approx(9.0)
    assert forward_equivalents(3, 4, 32, 256, method="attribution") == pytest.approx(4.0)
    assert forward_equivalents(3, 4, 32, 256, method="attribution", verify=3) == pytest.approx(4.0 + 3 * 4 / 6)
    with pytest.raises(CortexmapError):
        forward_equivalents(3, 4, 32, 256, method="magic")


def test_facts_from_config_match_the_built_model() -> None:
    handle = tiny_handle("llama_gqa")
    from_config = ModelFacts.from_config(_config("llama_gqa"))
    assert from_config.n_params == handle.n_params
    assert (from_config.n_layers, from_config.n_heads, from_config.d_model) == (3, 4, 32)
    assert bytes_per_row(from_config, 10) == bytes_per_row(handle, 10)


def test_auto_rows_on_cpu_and_with_a_budget() -> None:
    handle = tiny_handle("gpt2")
    assert auto_rows(handle, 8) == 256  # about 2048 prompt tokens per pass on a CPU
    assert auto_rows(handle, 4) == 512 and auto_rows(handle, 64) == 32 and auto_rows(handle, 1000) == 16
    assert auto_rows(handle, 8, budget_bytes=10 * bytes_per_row(handle, 8)) == 10


def test_calibration_times_the_real_building_blocks() -> None:
    timing = calibrate(tiny_handle("llama"), batch=4, seq=6, rows_per_pass=8, attribution=True)
    assert set(timing) == {"clean_s", "block_row_s", "attribution_s"}
    assert all(value > 0 for value in timing.values())


def test_plan_of_a_loaded_model() -> None:
    handle = tiny_handle("llama")
    plan = plan_run(handle, cfg(70, ['zero', 'patch'], 'exact'), n_tasks=2, seq=6)
    assert plan.fits and plan.message.startswith("fits")
    assert plan.batches_per_task == 2 and plan.units == 4 and plan.head_interventions == 4 * 12
    # per task and batch: clean + second clean + corrupt pass, and 2 units of 4 * (3 + 1) / 2 passes
    assert plan.forward_equivalents == pytest.approx(2 * 2 * (3 + 2 * 8))
    assert plan.time_s > 0 and plan.time_source.startswith("calibrated")
    memory = plan.memory
    assert memory.weights == handle.n_params * 4 and memory.peak > memory.weights + memory.caches
    assert require_fit(plan) is plan


def test_attribution_plans_fewer_passes_than_exact() -> None:
    handle = tiny_handle("gpt2")
    exact = plan_run(handle, cfg(8), 1, 6, calibrated=False)
    screen = plan_run(handle, cfg(8, ['zero'], 'attribution', verify=2), 1, 6, calibrated=False)
    assert screen.forward_equivalents < exact.forward_equivalents
    assert exact.time_s is None  # not calibrated, and a CPU has no known peak


def test_a_model_too_large_for_the_device_cannot_fit() -> None:
    facts = ModelFacts("llama-2-70b", 80, 64, 8192, 28672, 32000, 68_976_648_192, 2)
    plan = plan_run(facts, cfg(32), 1, 16, device="cpu", memory_bytes=80 * GB, host_bytes=1000 * GB)
    assert not plan.fits
    assert "weights alone" in plan.message and "--device auto" in plan.message
    with pytest.raises(CortexmapError, match="llama-2-70b needs 138.0 GB") as info:
        require_fit(plan)
    assert "\n" not in str(info.value)


def test_a_sharded_model_is_planned_against_all_its_gpus(monkeypatch) -> None:  # noqa: ANN001
    import cortexmap.sweep.plan as plan_module

    budgets = {"cuda:0": 80 * GB, "cuda:1": 40 * GB}
    monkeypatch.setattr(plan_module, "_device_budget", lambda device: budgets[str(device)])
    handle = tiny_handle("llama")
    handle.model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1,
                                  "model.layers.2": 1, "lm_head": 1}
    assert [str(d) for d in plan_module.shard_devices(handle, None)] == ["cuda:0", "cuda:1"]
    plan = plan_run(handle, cfg(8), 1, 6, device="cuda:0", calibrated=False)
    assert plan.memory.budget == 120 * GB and plan.device == "cuda:0, cuda:1"
    assert "2 GPUs" in plan.message
    del handle.model.hf_device_map  # one GPU: its own memory only
    assert plan_run(handle, cfg(8), 1, 6, device="cuda:0", calibrated=False).memory.budget == 80 * GB


def test_rows_shrink_to_fit_and_caches_can_be_the_limit() -> None:
    facts = ModelFacts.from_config(_config("llama"))
    roomy = plan_run(facts, cfg(64), 1, 8, memory_bytes=10 * GB, rows_per_pass=4096)
    assert roomy.fits and roomy.rows_per_pass == 4096
    budget = int(roomy.memory.weights * 1.1 + roomy.memory.caches * 1.1 + 200 * bytes_per_row(facts, 8) * 1.5)
    tight = plan_run(facts, cfg(64), 1, 8, memory_bytes=budget, rows_per_pass=4096)
    assert tight.fits and 64 <= tight.rows_per_pass < 4096 and tight.memory.peak <= budget
    starved = plan_run(facts, cfg(64, ['patch'], 'exact'), 1, 8, memory_bytes=int(roomy.memory.weights * 1.2))
    assert not starved.fits and "fewer --prompts" in starved.message


def test_bad_interventions_and_methods_are_refused() -> None:
    handle = tiny_handle("llama")
    with pytest.raises(CortexmapError):
        plan_run(handle, cfg(8, ['explode'], 'exact'), 1, 6)
    with pytest.raises(CortexmapError):
        plan_run(handle, cfg(8, ['zero'], 'guess'), 1, 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_plan_estimates_from_flops_without_a_handle() -> None:
    plan = plan_run(ModelFacts.from_config(_config("llama")), cfg(8), 1, 6, device="cuda")
    assert plan.fits
