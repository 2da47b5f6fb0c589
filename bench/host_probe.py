"""The server-side probe of the host benchmark: a custom node package written into the benchmark server's
`custom_nodes/` at run time (never part of the pack) that records, inside the ComfyUI process,

- every 0.25 s, `torch.cuda.memory_allocated` per CUDA device;
- every second, where each model sits: the parameter and buffer bytes per device of every module whose class is
  a Wan DiT, VAE or UMT5 (ours: `WanDiT`, `WanVAE`, `UMT5EncoderModel`; ComfyUI's: `WanModel`, `WanVAE`, `T5`).
  Models are registered (by weak reference) when they are built, through a wrapper of `torch.nn.Module.__init__`:
  no scan of the heap while a run is timed. The time each placement sample takes is reported;
- when each node starts and each prompt ends: the server's `executing`, `execution_success` and
  `execution_error` events (sent while a client id is set, as the harness's /prompt does), through a wrapper of
  `PromptServer.instance.send_sync`, so the harness can say how long each node ran.

On SIGUSR1 it writes the stack of every thread of the server to its stderr (the run's log): the harness sends it
when a run times out, so the log tells a slow run (threads in the DiT's forward) from a hung one (threads waiting).

GET `/wan22_probe` returns `{"memory": [[t, {device: bytes}]], "placements": [[t, [{"id", "class", "role",
"bytes": {device: n}}]]], "sample_seconds": [...], "events": [[t, event, prompt_id, node]], "devices": {index:
name}}` with `time.time()` stamps.
"""

PROBE_PACKAGE = "wan22_host_probe"

# Stacks of all threads to the process's original stderr on SIGUSR1 (ComfyUI wraps sys.stderr; fd 2 is the log).
STACK_DUMP_SOURCE = r'''
import faulthandler
import signal
import sys

if hasattr(signal, "SIGUSR1"):
    faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
'''

PROBE_SOURCE = STACK_DUMP_SOURCE + r'''
import threading
import time
import weakref

import torch
from aiohttp import web
from server import PromptServer

ROLES = {"WanDiT": "dit", "WanModel": "dit", "WanVAE": "vae", "UMT5EncoderModel": "t5", "T5": "t5"}
MEMORY_EVERY_S, PLACEMENT_EVERY_S = 0.25, 1.0
TIMED_EVENTS = ("executing", "execution_success", "execution_error")
_memory, _placements, _sample_seconds, _events = [], [], [], []
_models = weakref.WeakValueDictionary()
_module_init = torch.nn.Module.__init__


def _registering_init(self, *args, **kwargs):
    _module_init(self, *args, **kwargs)
    if type(self).__name__ in ROLES:
        _models[id(self)] = self


torch.nn.Module.__init__ = _registering_init


def _bytes_by_device(module):
    out = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        key = str(tensor.device)
        out[key] = out.get(key, 0) + tensor.numel() * tensor.element_size()
    return out


def _placement():
    rows = []
    for key, module in list(_models.items()):
        name = type(module).__name__
        rows.append({"id": key, "class": f"{type(module).__module__}.{name}", "role": ROLES[name],
                     "bytes": _bytes_by_device(module)})
    return rows


def _loop():
    next_placement = 0.0
    while True:
        now = time.time()
        if torch.cuda.is_available():
            _memory.append([now, {f"cuda:{i}": torch.cuda.memory_allocated(i)
                                  for i in range(torch.cuda.device_count())}])
        if now >= next_placement:
            _placements.append([now, _placement()])
            _sample_seconds.append(round(time.time() - now, 4))
            next_placement = now + PLACEMENT_EVERY_S
        time.sleep(MEMORY_EVERY_S)


def _timing(send_sync):
    def send(event, data, sid=None):
        if event in TIMED_EVENTS and isinstance(data, dict):
            _events.append([time.time(), event, data.get("prompt_id"), data.get("node")])
        return send_sync(event, data, sid)
    return send


PromptServer.instance.send_sync = _timing(PromptServer.instance.send_sync)


@PromptServer.instance.routes.get("/wan22_probe")
async def _report(request):
    devices = {i: torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())} \
        if torch.cuda.is_available() else {}
    return web.json_response({"memory": list(_memory), "placements": list(_placements),
                              "sample_seconds": list(_sample_seconds), "events": list(_events),
                              "devices": devices})


threading.Thread(target=_loop, name="wan22-host-probe", daemon=True).start()
NODE_CLASS_MAPPINGS = {}
'''
