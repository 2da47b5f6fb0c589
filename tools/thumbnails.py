"""Template thumbnails: a small JPG of each UI workflow's canvas (groups, nodes, links), drawn from the workflow file,
saved next to it as `<name>.jpg` (the template browser shows `example_workflows/<name>.jpg`)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

SIZE = (400, 300)
BACKGROUND, NODE, NOTE, TITLE, LINK = "#202020", "#353535", "#653", "#222", "#9a9"


def _hex(color: str) -> str:
    """LiteGraph's 3-digit colours as 6 digits (PIL reads both, but be explicit)."""
    return "#" + "".join(c * 2 for c in color[1:]) if len(color) == 4 else color


def draw(workflow: dict) -> Image.Image:
    """The whole graph fitted into `SIZE`, as the canvas shows it zoomed out."""
    boxes = [(*node["pos"], node["pos"][0] + node["size"][0], node["pos"][1] + node["size"][1])
             for node in workflow["nodes"]]
    boxes += [(x, y, x + w, y + h) for x, y, w, h in (group["bounding"] for group in workflow["groups"])]
    left, top = min(b[0] for b in boxes) - 20, min(b[1] for b in boxes) - 20
    right, bottom = max(b[2] for b in boxes) + 20, max(b[3] for b in boxes) + 20
    scale = min(SIZE[0] / (right - left), SIZE[1] / (bottom - top))

    def at(x: float, y: float) -> tuple[float, float]:
        return (x - left) * scale, (y - top) * scale

    image = Image.new("RGB", SIZE, BACKGROUND)
    pen = ImageDraw.Draw(image)
    for group in workflow["groups"]:
        x, y, w, h = group["bounding"]
        pen.rectangle([at(x, y), at(x + w, y + h)], fill=_hex(group["color"]))
    by_id = {node["id"]: node for node in workflow["nodes"]}
    for _link, source, _slot, target, _target_slot, _type in workflow["links"]:
        a, b = by_id[source], by_id[target]
        start = at(a["pos"][0] + a["size"][0], a["pos"][1] + 20)
        end = at(b["pos"][0], b["pos"][1] + 20)
        pen.line([start, end], fill=LINK, width=1)
    for node in workflow["nodes"]:
        x, y = node["pos"]
        w, h = node["size"]
        fill = NOTE if node["type"] == "Note" else NODE
        pen.rectangle([at(x, y - 30), at(x + w, y + h)], fill=fill, outline=TITLE)
        pen.rectangle([at(x, y - 30), at(x + w, y)], fill=TITLE)
    return image


def write_thumbnail(workflow: dict, path: Path) -> None:
    draw(workflow).save(path, "JPEG", quality=85)
