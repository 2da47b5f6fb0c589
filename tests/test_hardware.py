import pytest
import torch

from nodes.gpu_check import Wan22GPUCheck
from wan_core.hardware import (
    CPU_ONLY_REPORT,
    OFFLOAD,
    T5_CPU,
    TILED_DECODE,
    GPUSpec,
    Setup,
    hardware_report,
    list_gpus,
    recommend,
    weights_gib,
)

H100 = GPUSpec(0, "NVIDIA H100 80GB HBM3", 79.2, 78.0, (9, 0))
RTX4090 = GPUSpec(1, "NVIDIA GeForce RTX 4090", 23.99, 22.5, (8, 9))
RTX3090 = GPUSpec(0, "NVIDIA GeForce RTX 3090", 23.69, 23.0, (8, 6))
RTX4080 = GPUSpec(0, "NVIDIA GeForce RTX 4080", 15.99, 15.0, (8, 9))
V100 = GPUSpec(0, "Tesla V100-SXM2-16GB", 15.77, None, (7, 0))


def chosen(gpu: GPUSpec) -> dict[str, Setup | None]:
    return {r.family: r.setup for r in recommend(gpu.total_gib, bf16=gpu.bf16, fp8=gpu.fp8)}


def test_weights_from_parameter_counts():
    assert weights_gib(14.3e9, "bf16") == pytest.approx(26.63, abs=0.01)
    assert weights_gib(14.3e9, "fp8") == pytest.approx(13.32, abs=0.01)
    assert weights_gib(5.7e9, "bf16") == pytest.approx(10.62, abs=0.01)
    # Both experts + T5 resident, bf16, 720p: 2 x 26.6 + 10.6 + Wan2.1 VAE decode 10 + reserve 2.
    assert Setup("A14B", "bf16", "720p").need_gib == pytest.approx(53.26 + 10.62 + 10 + 2, abs=0.1)


def test_80gb_runs_a14b_bf16_resident():
    assert chosen(H100)["T2V/I2V-A14B"] == Setup("A14B", "bf16", "720p")
    assert chosen(H100)["TI2V-5B"].settings == ()


def test_24gb_needs_offload_and_fp8_for_a14b_and_offload_for_5b():
    for gpu in (RTX4090, RTX3090):
        a14b, ti2v = chosen(gpu).values()
        assert a14b.weights == "fp8" and OFFLOAD in a14b.settings and T5_CPU in a14b.settings
        assert ti2v.weights == "bf16" and OFFLOAD in ti2v.settings and TILED_DECODE not in ti2v.settings
    notes = {r.family: r.notes for r in recommend(RTX3090.total_gib, bf16=True, fp8=RTX3090.fp8)}
    assert "no speed-up" in notes["T2V/I2V-A14B"][0] and notes["TI2V-5B"] == ()


def test_16gb_needs_fp8_offload_and_tiled_decode_and_a14b_does_not_fit():
    a14b, ti2v = chosen(RTX4080).values()
    assert a14b is None
    assert ti2v == Setup("5B", "fp8", "720p", (OFFLOAD, T5_CPU, TILED_DECODE))
    assert all(s is None for s in chosen(GPUSpec(0, "8 GB card", 7.8, 7.0, (8, 6))).values())


def test_capabilities_and_report_text():
    assert (H100.bf16, H100.fp8, RTX3090.bf16, RTX3090.fp8, V100.bf16) == (True, True, True, False, False)
    report = hardware_report([H100, V100])
    assert "GPU 0: NVIDIA H100 80GB HBM3, 79.2 GiB, 78.0 GiB free, compute capability 9.0, bf16 yes, fp8 e4m3 yes" \
        in report
    assert "GPU 1" not in report and "compute capability 7.0, bf16 no, fp8 e4m3 no" in report
    assert "no native bf16" in report and "does not fit" in report and "Wan22SetDevice" in report
    assert hardware_report([]) == CPU_ONLY_REPORT


def test_node_reports_this_machine():
    assert Wan22GPUCheck.OUTPUT_NODE and Wan22GPUCheck.INPUT_TYPES() == {"required": {}}
    output = Wan22GPUCheck().check()
    report = output["result"][0]
    assert output["ui"]["text"] == [report]
    if torch.cuda.is_available():
        assert report.startswith("GPU 0:") and len(list_gpus()) == torch.cuda.device_count()
    else:
        assert report == CPU_ONLY_REPORT
