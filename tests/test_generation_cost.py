"""The generation cost model (tpgpt.analysis.generation_cost) and `tpgpt plan --inference
--interconnect`: FLOPs and bytes against the model, the roofline, a measured device, 70B."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import make_gpt
from tpgpt import ParallelGPT, SyncPlan
from tpgpt.analysis.costmodel import BUILTIN, Interconnect
from tpgpt.analysis.generation_cost import (DEVICES, IMPLIED_DEVICE, Device, load_device,
                                            measured_device, pass_work, predict_generation)
from tpgpt.cli import main
from tpgpt.errors import ConfigError


@pytest.mark.parametrize("tp,vp", [(1, False), (2, False), (2, True), (4, True)])
def test_pass_flops_and_bytes_match_the_model(tp, vp):
    """The matmul FLOPs of a cached prefill and decode step are what torch's FlopCounterMode
    counts for one rank (it does not see the attention kernel on the CPU: that term, 2 x 2 x
    batch x new x keys x n_embd/tp per layer for QK^T and AV, is added by hand); the weight
    bytes are one rank's matmul weights and head, then its heads' keys and values."""
    gpt = make_gpt()
    c = gpt.config
    model = ParallelGPT.from_dense(gpt, tp=tp, sync="spd", vocab_parallel=vp)
    B, P = 2, 5
    idx = torch.randint(0, c.vocab_size, (B, P), generator=torch.Generator().manual_seed(0))
    cache = model.new_kv_cache(B)
    R = model.comm.local_ranks
    with torch.no_grad():
        for new, keys_total, x in ((P, P * (P + 1) / 2, idx), (1, P + 1, idx[:, -1:])):
            with FlopCounterMode(display=False) as fc:
                model(x, cache=cache)
            flops, nbytes = pass_work(c, tp, batch=B, new=new, keys=keys_total / new,
                                      vocab_parallel=vp, dtype_bytes=4)
            attention = 4 * c.n_layer * B * keys_total * c.n_embd / tp
            # a simulation runs the replicated head once for its R ranks
            head_once = 0 if vp else (R - 1) * 2 * B * c.vocab_size * c.n_embd
            assert R * (flops - attention) - head_once == fc.get_total_flops()
    sharded = model.sharded_param_ids()
    weights = sum(p.numel() // (R if id(p) in sharded else 1) for n, p in
                  model.named_parameters() if n.endswith("weight") and p.dim() >= 2
                  and "wpe" not in n)
    kv = 2 * c.n_layer * B * (P + 1) * c.n_embd // tp
    assert nbytes == (weights + kv) * 4


def test_roofline_memory_bound_decode_and_compute_bound_prefill():
    c = make_gpt().config
    ic, dev = BUILTIN["nvlink-h100"], DEVICES["h100-sxm"]
    p = predict_generation(c, SyncPlan.parse("tp", c.n_layer), tp=2, batch=1, prompt_len=8,
                           new_tokens=4, vocab_parallel=False, dtype_bytes=2, device=dev, ic=ic)
    d = p["decode"]
    flops, nbytes = pass_work(c, 2, batch=1, new=1, keys=8 + 2, vocab_parallel=False,
                              dtype_bytes=2)
    assert d["bound"] == "memory" and d["compute_s"] == nbytes / dev.mem_bandwidth_Bps
    assert d["comm_s"] == 8 * ic.collective_time("all_reduce", 1 * 32 * 2, 2)
    assert p["generation_s"] == pytest.approx(p["prefill"]["total_s"] + 3 * d["total_s"])
    big = predict_generation(c, SyncPlan.parse("tp", c.n_layer), tp=2, batch=64,
                             prompt_len=16, new_tokens=0 + 1, vocab_parallel=False,
                             dtype_bytes=2, device=Device("slow", 1e-6, 1e15), ic=ic)
    assert big["prefill"]["bound"] == "compute"


@pytest.mark.parametrize("batch", [1, 8])
def test_measured_device_reproduces_its_measurements(batch):
    """Fitted on a compute-only decode step and prefill, the device predicts exactly those."""
    c = make_gpt().config
    P, N, t_d, t_p = 12, 4, 2e-3, 9e-3
    dev = measured_device(c, 2, batch=batch, prompt_len=P, keys=P + N / 2, t_decode=t_d,
                          t_prefill=t_p, dtype_bytes=4)
    p = predict_generation(c, SyncPlan.parse("tp", c.n_layer), tp=2, batch=batch, prompt_len=P,
                           new_tokens=N, vocab_parallel=False, dtype_bytes=4, device=dev,
                           ic=Interconnect("none", 0.0, 1e30))
    assert p["decode"]["total_s"] == pytest.approx(t_d, rel=1e-9)
    assert p["prefill"]["total_s"] == pytest.approx(t_p, rel=1e-9)
    assert (p["decode"]["bound"], p["prefill"]["bound"]) == ("memory", "compute")


def test_devices_load_and_bad_ones_are_refused(tmp_path):
    assert set(IMPLIED_DEVICE) == set(BUILTIN) and set(IMPLIED_DEVICE.values()) <= set(DEVICES)
    assert all(d.source for d in DEVICES.values())
    f = tmp_path / "decode.json"  # a `bench decode` result holds its device under "device"
    f.write_text(json.dumps({"device": {"name": "m", "tflops": 0.01,
                                        "mem_bandwidth_Bps": 5e9}}))
    assert load_device(str(f)).mem_bandwidth_Bps == 5e9
    for bad in ({"name": "m", "tflops": 0, "mem_bandwidth_Bps": 1}, {"name": "m"}, [1],
                {"name": "m", "tflops": float("inf"), "mem_bandwidth_Bps": 1}):
        f.write_text(json.dumps(bad))
        with pytest.raises(ConfigError):
            load_device(str(f))
    with pytest.raises(ConfigError, match="neither a built-in device"):
        load_device("tpu-v9")


def test_70b_class_spd_saving_on_three_interconnects(capsys):
    """The SPD paper's setting (LLaMA2-70B-class shape at tp=8): the prediction of what `spd`
    saves per token on NVLink, PCIe and InfiniBand, every figure with its source printed."""
    shape = ["--n_layer", "80", "--n_embd", "8192", "--n_head", "64", "--vocab_size", "32000",
             "--block_size", "4096", "--tp", "8", "--dtype_bytes", "2", "--prompt_len", "512",
             "--new_tokens", "128", "--sync", "tp", "spd"]
    savings = {}
    for ic in ("nvlink-h100", "pcie4", "ib-ndr"):
        assert main(["plan", "--inference", "--json", "--interconnect", ic, *shape]) == 0
        tp, spd = json.loads(capsys.readouterr().out)
        assert spd["forward_syncs"] == 80 and tp["forward_syncs"] == 160
        a, b = tp["prediction"]["decode"], spd["prediction"]["decode"]
        assert a["compute_s"] == b["compute_s"] and a["bound"] == "memory"
        savings[ic] = 1 - b["total_s"] / a["total_s"]
        assert 0 < savings[ic] < 0.5  # half the syncs: at most half the communication
    assert main(["plan", "--inference", "--interconnect", "pcie4", *shape]) == 0
    out = capsys.readouterr().out
    assert "a100-pcie: NVIDIA A100" in out and "PCI-SIG" in out and "vs tp" in out


def test_inference_flags_are_checked(capsys, tmp_path):
    link = tmp_path / "link.json"  # a `bench comm` profile: a link, no device
    link.write_text(json.dumps({"name": "l", "alpha_s": 1e-4, "bandwidth_Bps": 1e9}))
    for args, msg in ((["--prompt_len", "10", "--new_tokens", "7", "--block_size", "16"],
                       "exceeds block_size=16"),
                      (["--prompt_len", "0"], "must both be >= 1"),
                      (["--interconnect", "pcie4", "--device", "tpu"], "neither a built-in"),
                      (["--device", "h100-sxm"], "needs --interconnect"),
                      (["--interconnect", str(link)], "implies no device: name one")):
        assert main(["plan", "--inference", *args]) == 2
        assert msg in capsys.readouterr().err
    assert main(["plan", "--device", "h100-sxm"]) == 2
    assert "--device is for --inference" in capsys.readouterr().err
    assert main(["plan", "--inference", "--interconnect", "pcie4", "--achieved-tflops", "9"]) == 2
    assert "--achieved-tflops is for training steps" in capsys.readouterr().err
