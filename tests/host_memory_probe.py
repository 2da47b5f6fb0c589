"""Our `ManagedModel`s through a real ComfyUI's own memory manager (`comfy.model_management`), run with that ComfyUI's
Python by `tests/test_memory_manager.py`: two modules registered with `load_models_gpu`, evicted by `free_memory`
(with a RAM shortfall where the host's signature takes one, so `partially_unload_ram` is asked too), one loaded
again and dropped by `unload_all_models`. ComfyUI runs with `--cpu`, so models load onto the CPU; they unload to
the meta device, which makes each unload visible. Prints one JSON line.

    python tests/host_memory_probe.py COMFYUI_DIR PACK_DIR
"""

import importlib.util
import inspect
import json
import sys

comfyui_dir, pack_dir = sys.argv[1:3]
sys.argv = [sys.argv[0], "--cpu"]
sys.path.insert(0, comfyui_dir)

import comfy.options  # noqa: E402
import torch  # noqa: E402

comfy.options.enable_args_parsing()
import comfy.model_management as mm  # noqa: E402

# ComfyUI has a top-level `nodes` module, so the pack is imported as a package of its own, as ComfyUI imports it
spec = importlib.util.spec_from_file_location("comfyui_wan22", f"{pack_dir}/__init__.py",
                                              submodule_search_locations=[pack_dir])
pack = importlib.util.module_from_spec(spec)
sys.modules["comfyui_wan22"] = pack
spec.loader.exec_module(pack)
from comfyui_wan22.nodes.memory_manager import ManagedModel  # noqa: E402

CPU, META = torch.device("cpu"), torch.device("meta")
first, second = torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)
a, b = ManagedModel(first, CPU, offload_device=META), ManagedModel(second, CPU, offload_device=META)


def devices() -> list[str]:
    return [first.weight.device.type, second.weight.device.type]


def registered() -> list[str]:
    return ["a" if m.model is a else "b" if m.model is b else "other" for m in mm.current_loaded_models]


report = {}
mm.load_models_gpu([a])
mm.load_models_gpu([b])
report["loaded"] = (registered(), devices())
ram_shortfall = {"ram_required": 1 << 62} if "ram_required" in inspect.signature(mm.free_memory).parameters else {}
report["freed"] = (len(mm.free_memory(1e30, CPU, **ram_shortfall)), registered(), devices())
first.to_empty(device=CPU)  # back from the meta device (no data), to load it again
mm.load_models_gpu([a])
if hasattr(mm, "unload_model_and_clones"):  # ComfyUI >= 0.1x: a native model's multi-GPU clones unloaded, ours kept
    class NativeModel:
        clone_base_uuid = object()

        def get_nested_additional_models(self) -> list:
            return []

    mm.unload_model_and_clones(NativeModel())
    report["unload_clones"] = (registered(), devices())
mm.unload_all_models()
report["unload_all"] = (registered(), devices())
print(json.dumps(report))
