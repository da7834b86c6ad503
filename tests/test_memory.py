"""Memory by budget (issue 17), checked on the CPU with SIMULATED free memory:

* the placement rule for skips / residuals (device | host | recompute) from the model source's free-memory
  figure and the available RAM; batched seeds from the same figure;
* the Clear-VAE band budget from the free memory (a stage bands the VAE when its model source reports little
  free memory, with the same image), and the free-memory figure itself (torch.cuda.mem_get_info, a per-process
  memory limit);
* the decoder releases every skip as soon as it has used it (untiled and banded), the one-shot call hands
  its skips over, a re-used encoding keeps them, and an out-of-memory error after skips were released is
  recovered by encoding again;
* every stage hands its memory estimate to the model source (what ComfyUI's model management receives).
"""

from __future__ import annotations

import logging
import weakref

import pytest
import torch

from r2r.errors import R2RUserError
from r2r.imaging import tiling
from r2r.pipeline import R2RPipeline, memory
from r2r.pipeline.model_sources import ResidentModels, cuda_free_memory

GIB = 1024**3
CUDA = torch.device("cuda")  # a device object only: nothing runs on it


@pytest.fixture
def ram(monkeypatch):
    """16 GiB of available RAM, whatever this machine has."""
    monkeypatch.setattr(memory, "available_host_bytes", lambda: 16 * GIB)


# ----------------------------------------------------------------------------- the placement rule
@pytest.mark.parametrize("nbytes,free,expected", [
    (1 * GIB, 20 * GIB, "device"),  # <= 10 % of the free device memory
    (1 * GIB, 5 * GIB, "host"),  # > 10 % of it, <= 25 % of the RAM
    (5 * GIB, 5 * GIB, "recompute"),  # neither
    (1 * GIB, None, "host"),  # no free-memory figure: never on the device
])
def test_placement_on_an_accelerator_from_the_free_memory(ram, nbytes, free, expected, caplog):
    with caplog.at_level(logging.INFO, logger="r2r.pipeline.memory"):
        assert memory.choose_placement("auto", nbytes, CUDA, "Clear-VAE skips", free) == expected
    assert "Clear-VAE skips" in caplog.text and memory.PLACEMENT_WORDS[expected] in caplog.text


def test_placement_on_the_cpu_and_requested_placements(ram):
    cpu = torch.device("cpu")
    assert memory.choose_placement("auto", 3 * GIB, cpu, "skips", 100 * GIB) == "device"  # the device is RAM
    assert memory.choose_placement("auto", 5 * GIB, cpu, "skips", None) == "recompute"
    for requested in ("device", "host", "recompute"):
        assert memory.choose_placement(requested, 50 * GIB, CUDA, "skips", 0) == requested
    with pytest.raises(R2RUserError, match="skips placement"):
        memory.choose_placement("gpu", 1, CUDA, "skips", 0)


def test_seed_batches_from_the_free_memory(ram):
    per_seed = memory.unet_activation_bytes(1, (128, 128), torch.float16)
    assert memory.seeds_per_forward(4, per_seed, CUDA, 100 * GIB) == 4
    assert memory.seeds_per_forward(4, per_seed, CUDA, int(2.5 * per_seed)) == 1  # half of it holds one
    assert memory.seeds_per_forward(4, per_seed, CUDA, 5 * per_seed) == 2
    assert memory.seeds_per_forward(4, per_seed, CUDA, 0) == 1  # at least one


# ----------------------------------------------------------------------------- the Clear-VAE budget
def test_vae_budget_from_the_free_memory():
    default = 6 * GIB
    assert memory.vae_budget_bytes(None, default) == default  # CPU: the configured budget
    assert memory.vae_budget_bytes(40 * GIB, default) == default  # never above it
    assert memory.vae_budget_bytes(4 * GIB, default) == int(0.6 * 4 * GIB)
    assert memory.vae_budget_bytes(10 * 2**20, default) == memory.MIN_VAE_BUDGET


@pytest.mark.parametrize("free_gib,decode_banded", [(20, False), (4, True)])
def test_official_vae_at_1024_fp16_bands_on_a_small_card(free_gib, decode_banded):
    """The full-size Clear-VAE at 1024² in fp16: untiled on a card with 20 GiB free; with 4 GiB free (what an
    8 GB card has left beside the networks) the decoder runs in bands, the encoder (smaller) still untiled."""
    budget = memory.vae_budget_bytes(free_gib * GIB, tiling.memory_budget_bytes())
    assert not tiling.should_tile(1024, 1024, dtype=torch.float16, budget_bytes=budget, which="encode")
    assert tiling.should_tile(1024, 1024, dtype=torch.float16, budget_bytes=budget, which="decode") == decode_banded


class SimulatedFree(ResidentModels):
    """The tiny release resident on the CPU, reporting a chosen free-memory figure and recording the estimate
    every stage hands over with its network."""

    def __init__(self, components, free):
        super().__init__(components)
        self.free, self.asked = free, []

    def free_memory(self):
        return self.free

    def get(self, name, memory_required=0):
        self.asked.append((name, int(memory_required)))
        return super().get(name, memory_required)


def _scene(h=96, w=128):
    g = torch.Generator().manual_seed(0)
    comp = torch.rand(1, 3, h, w, generator=g)
    mask = torch.zeros(1, 1, h, w)
    mask[..., h // 4: 3 * h // 4, w // 3: 2 * w // 3] = 1
    return comp, mask


@pytest.fixture
def pipe_with_free(tiny_components):
    def make(free):
        return R2RPipeline(models=SimulatedFree(tiny_components, free), scheduler="euler_ancestral")
    return make


def test_stages_band_the_vae_when_the_source_reports_little_free_memory(pipe_with_free, monkeypatch):
    comp, mask = _scene()
    calls = []
    for name in ("tiled_encode_with_skips", "tiled_decode_with_skips"):
        real = getattr(tiling, name)
        monkeypatch.setattr(tiling, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    roomy = pipe_with_free(None)(comp, mask, num_inference_steps=2, generator=1, max_side=128)
    assert calls == []
    monkeypatch.setattr(memory, "MIN_VAE_BUDGET", 1)  # the tiny VAE needs a few MB: a 1 MB card
    small = pipe_with_free(2**20)
    tight = small(comp, mask, num_inference_steps=2, generator=1, max_side=128)
    assert calls == ["tiled_encode_with_skips", "tiled_decode_with_skips"]
    assert (tight.images - roomy.images).abs().max() < 1e-5
    # the estimates handed over with the Clear-VAE are capped at the budget the passes ran under
    budget = memory.vae_budget_bytes(2**20, tiling.memory_budget_bytes())
    assert {m for n, m in small.models.asked if n == "clear_vae"} == {budget}


def test_every_stage_hands_its_estimate_to_the_model_source(pipe_with_free):
    pipe = pipe_with_free(None)
    comp, mask = _scene()
    pipe(comp, mask, num_inference_steps=2, generator=1, max_side=128)
    asked = pipe.models.asked
    assert [n for n, _ in asked] == ["clear_vae", "controller", "unet", "clear_vae"]
    assert all(m > 0 for _, m in asked), asked


# ----------------------------------------------------------------------------- the free-memory figure
def test_cuda_free_memory_and_a_per_process_limit(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (30 * GIB, 141 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda d=None: {"reserved_bytes.all.current": 3 * GIB,
                                                                   "allocated_bytes.all.current": 2 * GIB})
    assert cuda_free_memory(CUDA) == 31 * GIB  # free + what torch's cache holds unused
    assert cuda_free_memory(torch.device("cpu")) is None

    class Props:
        total_memory = 141 * GIB

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d=None: Props)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: 3 * GIB)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda d=None: 1.0)
    assert memory.capped_free_bytes(CUDA, 31 * GIB) == 31 * GIB
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda d=None: 8 * GIB / (141 * GIB))
    assert memory.capped_free_bytes(CUDA, 31 * GIB) == pytest.approx(5 * GIB, abs=2)  # 8 GiB cap, 3 in use
    assert cuda_free_memory(CUDA) == pytest.approx(5 * GIB, abs=2)  # the CLI / Python API sources are capped too
    assert memory.capped_free_bytes(torch.device("cpu"), None) is None


# ----------------------------------------------------------------------------- the decoder releases skips
@pytest.fixture
def vae(tiny_components):
    return tiny_components.clear_vae


def _encoded(vae, h=128, w=192):
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        posterior, skips = vae.encode_with_skips(x)
    return posterior.mean, skips


@pytest.mark.parametrize("banded", [False, True])
def test_decoder_releases_each_skip_right_after_use(vae, banded):
    z, skips = _encoded(vae)
    with torch.no_grad():
        expected = vae.decode_with_skips(z, skips)
    refs = [weakref.ref(s) for s in skips]
    n = len(skips)
    resnets = [r for block in vae.decoder.up_blocks for r in block.resnets]
    seen = set()

    def check(k):
        def hook(module, args):  # resnet k takes skip n-1-k: every skip used before it is gone
            seen.add(k)
            alive = [n - 1 - j for j in range(k) if refs[n - 1 - j]() is not None]
            assert not alive, f"decoder resnet {k}: skips {alive} used earlier are still alive"
        return hook

    # both the untiled resnet and the banded one call the resnet's skip_connect with its skip
    handles = [r.skip_connect.register_forward_pre_hook(check(k)) for k, r in enumerate(resnets)]
    owned = list(skips)
    del skips
    try:
        with torch.no_grad():
            if banded:
                out = tiling.tiled_decode_with_skips(vae, z, owned, consume_skips=True)
            else:
                out = vae.decode_with_skips(z, owned, consume=True)
    finally:
        for h in handles:
            h.remove()
    assert seen == set(range(n))
    assert owned == [None] * n and all(r() is None for r in refs)
    assert (out - expected).abs().max() < 1e-5


def test_one_shot_call_hands_its_skips_over_and_reuse_keeps_them(pipe_with_free, monkeypatch):
    pipe = pipe_with_free(None)
    comp, mask = _scene()
    consumed = []
    real = tiling.decode_with_skips_auto
    monkeypatch.setattr(tiling, "decode_with_skips_auto",
                        lambda *a, **k: consumed.append(k.get("consume_skips")) or real(*a, **k))
    one = pipe(comp, mask, num_inference_steps=2, generator=1, max_side=128)
    assert consumed == [True]
    prepared = pipe.prepare(comp, mask, max_side=128)
    encoded = pipe.encode(prepared)
    latents = one.latents
    a = pipe.decode(latents, encoded, prepared)  # a kept encoding (the graph's re-runs): not consumed
    assert consumed[-1] is False and encoded.skips is not None and all(s is not None for s in encoded.skips)
    b = pipe.decode(latents, encoded, prepared, consume_skips=True)
    assert consumed[-1] is True and encoded.skips is None
    c = pipe.decode(latents, None, prepared)  # skips encoded again: the decoder owns them
    assert consumed[-1] is True
    assert torch.equal(a, b) and (a - c).abs().max() < 1e-6 and (a - one.working_images).abs().max() < 1e-6


def test_out_of_memory_after_releasing_skips_encodes_again(pipe_with_free, monkeypatch):
    pipe = pipe_with_free(None)
    comp, mask = _scene()
    prepared = pipe.prepare(comp, mask, max_side=128)
    encoded = pipe.encode(prepared)
    latents = torch.randn(1, 4, *prepared.latent_size, generator=torch.Generator().manual_seed(5))
    expected = pipe.decode(latents, encoded, prepared)
    resnet = pipe.models.components.clear_vae.decoder.up_blocks[1].resnets[0]
    real_forward = type(resnet).forward

    def oom(self, *a, **k):
        if self is resnet:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(self, *a, **k)

    monkeypatch.setattr(type(resnet), "forward", oom)
    got = pipe.decode(latents, encoded, prepared, consume_skips=True)  # untiled fails half-way: banded again
    assert (got - expected).abs().max() < 1e-5
    encoded = pipe.encode(prepared)
    with pytest.raises(torch.OutOfMemoryError):
        pipe.decode(latents, encoded, None, consume_skips=True)  # nothing to encode again from
