"""Queue an API-format workflow on a running ComfyUI and print the video file(s) it saved.

    python api/queue_prompt.py api/wan22_t2v_a14b.json --server 127.0.0.1:8188 --prompt "a red fox in snow" --seed 7

`--width/--height/--frames/--steps` shrink a run for a quick check of an installation (the sampler, the batch queue or
the long-video node; the long video's frames are per chunk).

It POSTs the graph to /prompt, follows progress on the websocket (with `websocket-client` when installed; otherwise
it polls /history), then reads the outputs from /history/<prompt_id>. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path


def post_prompt(server: str, graph: dict, client_id: str) -> str:
    body = json.dumps({"prompt": graph, "client_id": client_id}).encode()
    request = urllib.request.Request(f"http://{server}/prompt", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as response:
            return json.load(response)["prompt_id"]
    except urllib.error.HTTPError as error:  # ComfyUI explains a refused graph in the body
        sys.exit(f"ComfyUI refused the workflow ({error.code}): {error.read().decode(errors='replace')}")


def get_history(server: str, prompt_id: str) -> dict | None:
    with urllib.request.urlopen(f"http://{server}/history/{prompt_id}") as response:
        return json.load(response).get(prompt_id)


def open_websocket(server: str, client_id: str):
    """A websocket to ComfyUI, opened before queueing so that no message is missed; None without websocket-client."""
    try:
        import websocket
    except ImportError:
        return None
    return websocket.create_connection(f"ws://{server}/ws?clientId={client_id}")


def follow_websocket(socket, prompt_id: str) -> None:
    """Print progress until the prompt finishes."""
    try:
        while True:
            message = socket.recv()
            if not isinstance(message, str):
                continue  # binary frames are preview images
            event = json.loads(message)
            data = event.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if event["type"] == "progress":
                print(f"\r  node {data['node']}: step {data['value']}/{data['max']}", end="", flush=True)
            elif event["type"] == "wan22.progress":
                where = f"[{data['device']}] {data.get('expert') or ''}"
                print(f"\r  {where} step {data['step']}/{data['total']}", end="", flush=True)
            elif event["type"] == "execution_error":
                sys.exit(f"\nnode {data.get('node_id')} failed: {data.get('exception_message')}")
            elif event["type"] == "executing" and data.get("node") is None:
                print()
                return
    finally:
        socket.close()


def wait_on_history(server: str, prompt_id: str, poll_seconds: float = 2.0) -> None:
    while (entry := get_history(server, prompt_id)) is None or not entry.get("status", {}).get("completed", False):
        if entry is not None and entry.get("status", {}).get("status_str") == "error":
            sys.exit(f"the prompt failed: {json.dumps(entry['status'].get('messages'), indent=1)}")
        time.sleep(poll_seconds)


def set_inputs(graph: dict, class_type: str, **values: object) -> None:
    for node in graph.values():
        if node["class_type"] == class_type:
            node["inputs"].update({name: value for name, value in values.items() if value is not None})


def apply_options(graph: dict, args: argparse.Namespace) -> None:
    """The command line's replacements: the styler's prompt, and seed and size in whichever node samples (the
    sampler, the batch queue, the long-video node)."""
    set_inputs(graph, "Wan22PromptStyler", prompt=args.prompt)
    for sampler in ("Wan22DiTSampler", "Wan22BatchQueueManager", "Wan22LongVideo"):
        set_inputs(
            graph, sampler, seed=args.seed, width=args.width, height=args.height, frames=args.frames, steps=args.steps,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workflow", type=Path, help="an API-format workflow (api/*.json)")
    parser.add_argument("--server", default="127.0.0.1:8188", help="host:port of ComfyUI")
    parser.add_argument("--prompt", help="replace the prompt of the Wan2.2 Prompt Styler")
    parser.add_argument("--seed", type=int, help="replace the sampler seed")
    parser.add_argument("--width", type=int, help="replace the sampler width")
    parser.add_argument("--height", type=int, help="replace the sampler height")
    parser.add_argument("--frames", type=int, help="replace the sampler frame count (4n+1)")
    parser.add_argument("--steps", type=int, help="replace the sampler step count")
    args = parser.parse_args()

    graph = json.loads(args.workflow.read_text(encoding="utf-8"))
    apply_options(graph, args)
    client_id = uuid.uuid4().hex
    socket = open_websocket(args.server, client_id)
    prompt_id = post_prompt(args.server, graph, client_id)
    print(f"queued {args.workflow.name} as {prompt_id}")
    if socket is not None:
        follow_websocket(socket, prompt_id)
    else:
        wait_on_history(args.server, prompt_id)
    entry = get_history(args.server, prompt_id) or {}
    for node_id, output in entry.get("outputs", {}).items():
        for saved in output.get("images", []) + output.get("gifs", []):
            print(f"node {node_id} saved: output/{saved.get('subfolder', '')}/{saved['filename']}".replace("//", "/"))


if __name__ == "__main__":
    main()
