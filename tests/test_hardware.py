import pytest
import torch

from nodes.gpu_check import Wan22GPUCheck
from wan_core.hardware import (
    CPU_ONLY_REPORT,
    MODELS,
    OFFLOAD,
    GPUSpec,
    Setup,
    activation_gib,
    hardware_report,
    list_gpus,
    recommend,
    weights_gib,
)

H100 = GPUSpec(0, "NVIDIA H100 80GB HBM3", 79.2, 78.0, (9, 0))
RTX4090 = GPUSpec(1, "NVIDIA GeForce RTX 4090", 23.99, 22.5, (8, 9))
RTX3090 = GPUSpec(0, "NVIDIA GeForce RTX 3090", 23.69, 23.0, (8, 6))
RTX4080 = GPUSpec(0, "NVIDIA GeForce RTX 4080", 15.99, 15.0, (8, 9))
RTX3060 = GPUSpec(0, "NVIDIA GeForce RTX 3060", 11.99, 11.0, (8, 6))
V100 = GPUSpec(0, "Tesla V100-SXM2-16GB", 15.77, None, (7, 0))


def chosen(gpu: GPUSpec, ram_gib: float | None = None) -> dict[tuple[str, str], Setup | None]:
    return {(r.family, r.resolution): r.setup for r in recommend(gpu.total_gib, bf16=gpu.bf16, fp8=gpu.fp8,
                                                                   ram_gib=ram_gib)}


def test_weights_from_parameter_counts_and_measured_activations():
    assert weights_gib(5.7e9, "bf16") == pytest.approx(10.62, abs=0.01)
    a14b = MODELS["A14B"]
    assert a14b.gib("bf16") == pytest.approx(40 * 351.3e6 * 2 / 2**30 + 0.78, abs=0.01)
    # fp8 blocks, bf16 rest: 40 x 351e6 x 1 byte + 0.26e9 x 2 bytes
    assert a14b.gib("fp8") == pytest.approx((40 * 351.3e6) / 2**30 + 0.78, abs=0.05)
    assert a14b.gib("Q4_K") < a14b.gib("Q8_0") < a14b.gib("fp8") * 1.07
    assert a14b.gib("fp8", blocks=0) == pytest.approx(0.78, abs=0.01)  # time embedding etc. in float32
    assert activation_gib("A14B", "fp8", "720p") == 8.2 and activation_gib("A14B", "Q4_K", "720p") == 8.4
    # Both experts + T5 resident, bf16, 720p: 2 x 26.95 + 10.6 + Wan2.1 VAE decode 9.7 (measured) + reserve 1.
    assert Setup("A14B", "bf16", "720p").need_gib == pytest.approx(53.9 + 10.62 + 9.7 + 1, abs=0.1)


def test_80gb_runs_everything_resident_in_bf16():
    assert set(chosen(H100).values()) == {Setup("A14B", "bf16", "480p"), Setup("A14B", "bf16", "720p"),
                                          Setup("5B", "bf16", "720p")}


def test_24gb_a14b_fp8_with_offload_without_block_swap():
    for gpu in (RTX4090, RTX3090):
        setups = chosen(gpu)
        a14b = setups["T2V/I2V-A14B", "720p"]
        assert (a14b.weights, a14b.resident_blocks, a14b.settings) == ("fp8", None, (OFFLOAD,))
        assert setups["TI2V-5B", "720p"] == Setup("5B", "bf16", "720p", (OFFLOAD,))
    notes = {(r.family, r.resolution): r.notes for r in recommend(RTX3090.total_gib, bf16=True, fp8=False)}
    assert "no speed-up" in notes["T2V/I2V-A14B", "720p"][0] and notes["TI2V-5B", "720p"] == ()


def test_16gb_and_12gb_a14b_with_as_many_resident_blocks_as_fit():
    for gpu in (RTX4080, RTX3060):
        for resolution in ("480p", "720p"):
            setup = chosen(gpu, ram_gib=64)["T2V/I2V-A14B", resolution]
            assert setup.weights == "fp8" and OFFLOAD in setup.settings and 0 <= setup.resident_blocks < 40
            assert setup.need_gib <= gpu.total_gib
            more = Setup("A14B", "fp8", resolution, setup.settings, setup.resident_blocks + 1)
            assert more.need_gib > gpu.total_gib  # the most blocks that fit
    assert chosen(RTX4080)["T2V/I2V-A14B", "720p"].resident_blocks < chosen(RTX4080)["T2V/I2V-A14B", "480p"] \
        .resident_blocks
    report = recommend(RTX4080.total_gib, bf16=True, fp8=True)[1].describe()
    assert "block swap (" in report and "blocks_on_gpu" in report and "fp8_e4m3fn_fast" in report


def test_little_ram_picks_a_smaller_gguf_quant_and_8gb_does_not_fit_a14b_720p():
    setup = chosen(RTX3060, ram_gib=20)["T2V/I2V-A14B", "480p"]
    assert setup.weights in ("Q6_K", "Q5_K", "Q4_K", "Q3_K") and setup.ram_gib <= 20
    assert ".gguf" in recommend(RTX3060.total_gib, bf16=True, fp8=False, ram_gib=20)[0].describe()
    assert chosen(GPUSpec(0, "8 GB card", 7.8, 7.0, (8, 6)))["T2V/I2V-A14B", "720p"] is None


def test_capabilities_and_report_text():
    assert (H100.bf16, H100.fp8, RTX3090.bf16, RTX3090.fp8, V100.bf16) == (True, True, True, False, False)
    report = hardware_report([H100, V100])
    assert "GPU 0: NVIDIA H100 80GB HBM3, 79.2 GiB, 78.0 GiB free, compute capability 9.0, bf16 yes, fp8 e4m3 yes" \
        in report
    assert "GPU 1" not in report and "compute capability 7.0, bf16 no, fp8 e4m3 no" in report
    assert "no native bf16" in report and "Wan22SetDevice" in report
    assert "RAM: 16.0 GiB" in hardware_report([V100], ram_gib=16.0)
    assert hardware_report([]) == CPU_ONLY_REPORT


def test_node_reports_this_machine():
    assert Wan22GPUCheck.OUTPUT_NODE and Wan22GPUCheck.INPUT_TYPES() == {"required": {}}
    output = Wan22GPUCheck().check()
    report = output["result"][0]
    assert output["ui"]["text"] == [report]
    if torch.cuda.is_available():  # a first line gives the RAM where the OS says how much there is
        gpu_lines = [line for line in report.splitlines() if line.startswith("GPU ")]
        assert gpu_lines[0].startswith("GPU 0:") and len(gpu_lines) == len(list_gpus()) == torch.cuda.device_count()
    else:
        assert report == CPU_ONLY_REPORT
