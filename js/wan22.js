// comfyui-wan22 canvas extension: shows on each of our nodes where it runs, the sampler's progress and the batch
// queue state, from the server events documented in docs/canvas.md. Classic LiteGraph canvas: drawn on the canvas;
// the frontend's Vue node mode: a DOM widget in the node (the canvas does not draw nodes there).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

export const EXTENSION_NAME = "comfyui-wan22.canvas";
// Our node types: `NODE_CLASS_MAPPINGS` of nodes/__init__.py (tests/test_canvas_js.py keeps the two equal). Not a
// prefix: ComfyUI's own Wan22ImageToVideoLatent and Wan22FunControlToVideo start with "Wan22" too.
export const NODE_TYPES = new Set([
  "Wan22BatchQueueManager",
  "Wan22DiTSampler",
  "Wan22FrameInterpolate",
  "Wan22GPUCheck",
  "Wan22LongVideo",
  "Wan22LoraLoader",
  "Wan22ModelLoader",
  "Wan22PromptStyler",
  "Wan22SaveVideo",
  "Wan22SetDevice",
  "Wan22T5Encode",
  "Wan22T5Loader",
  "Wan22VAEDecode",
  "Wan22VAEEncode",
  "Wan22VAELoader",
]);
export const EVENTS = { device: "wan22.device", progress: "wan22.progress", queue: "wan22.queue" };
const REPORT_NODE = "Wan22GPUCheck";
const BADGE_COLORS = ["#2e7d32", "#1565c0", "#6a1b9a", "#ef6c00", "#00838f", "#ad1457", "#4e342e", "#283593"];
const CPU_COLOR = "#546e7a";
const STATUS_LINE_HEIGHT = 16;

const trackedNodes = new Set();

/** "cuda:1" / "gpu:1" -> "GPU 1", "cuda" -> "GPU 0", "cpu" -> "CPU"; any other text (a label already) as is. */
export function deviceLabel(device) {
  if (device === undefined || device === null) return "";
  const text = String(device).trim();
  const gpu = /^(?:cuda|gpu)(?::(\d+))?$/i.exec(text);
  if (gpu) return `GPU ${gpu[1] ?? 0}`;
  return /^(?:cpu|mps|xpu)$/i.test(text) ? text.toUpperCase() : text;
}

/** "high_noise" -> "high-noise expert", "low_noise" -> "low-noise expert"; null (single-model TI2V-5B) -> "". */
export function expertLabel(expert) {
  if (!expert) return "";
  const name = String(expert).toLowerCase();
  if (name.startsWith("high")) return "high-noise expert";
  if (name.startsWith("low")) return "low-noise expert";
  return `${expert} expert`;
}

/** `[GPU 1] high-noise expert, step 12/40` */
export function progressText({ device, expert, step, total }) {
  const where = deviceLabel(device);
  const parts = [expertLabel(expert), `step ${step}/${total}`].filter(Boolean);
  return `${where ? `[${where}] ` : ""}${parts.join(", ")}`;
}

/** `queue: 3 queued, 1 running, 5 done, 0 failed` */
export function queueText({ queued = 0, running = 0, done = 0, failed = 0 }) {
  return `queue: ${queued} queued, ${running} running, ${done} done, ${failed} failed`;
}

export function isWan22Node(node) {
  const type = node?.comfyClass ?? node?.type ?? "";
  return NODE_TYPES.has(type);
}

function findNode(id) {
  const graph = app.graph;
  if (!graph?.getNodeById || id === undefined || id === null) return null;
  const node = graph.getNodeById(id) ?? graph.getNodeById(Number(id));
  return node && isWan22Node(node) && node.wan22 ? node : null;
}

function updateNode(id, changes) {
  const node = findNode(id);
  if (!node) return;
  Object.assign(node.wan22, changes);
  renderStatusWidget(node);
  node.setDirtyCanvas?.(true, true);
}

/** The frontend's Vue node mode renders nodes as DOM: LiteGraph's onDrawForeground does not run there. */
export function vueNodesMode() {
  return Boolean(globalThis.LiteGraph?.vueNodesMode);
}

function statusWidget(node) {
  if (node.wan22.statusElement || !node.addDOMWidget) return node.wan22.statusElement ?? null;
  const element = document.createElement("div");
  element.className = "wan22-status";
  element.style.cssText = "display:flex;flex-direction:column;align-items:flex-start;gap:3px;padding:2px 4px;"
    + "font:12px sans-serif;color:#d0d0d0;";
  node.addDOMWidget("wan22_status", "wan22_status", element, { serialize: false, getMinHeight: () => 44 });
  node.wan22.statusElement = element;
  return element;
}

/** In Vue node mode (or once the widget exists): the badge and status lines as DOM in the node's body. */
function renderStatusWidget(node) {
  if (!vueNodesMode() && !node.wan22.statusElement) return;
  const element = statusWidget(node);
  if (!element) return;
  const { device, progress, queue } = node.wan22;
  const children = [];
  if (device) {
    const badge = document.createElement("span");
    badge.className = "wan22-badge";
    badge.textContent = device;
    badge.style.cssText = `background:${badgeColor(device)};color:#fff;font-weight:bold;border-radius:9px;`
      + "padding:1px 6px;";
    children.push(badge);
  }
  for (const line of [progress, queue].filter(Boolean)) {
    const text = document.createElement("span");
    text.className = "wan22-line";
    text.textContent = line;
    children.push(text);
  }
  element.replaceChildren(...children);
}

function badgeColor(label) {
  const gpu = /^GPU (\d+)$/.exec(label);
  return gpu ? BADGE_COLORS[Number(gpu[1]) % BADGE_COLORS.length] : CPU_COLOR;
}

function drawBadge(ctx, node, label) {
  const titleHeight = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  const height = 18;
  ctx.font = "bold 12px sans-serif";
  const width = ctx.measureText(label).width + 12;
  const x = node.size[0] - width - 6;
  const y = -titleHeight + (titleHeight - height) / 2;
  ctx.fillStyle = badgeColor(label);
  ctx.beginPath();
  if (ctx.roundRect) ctx.roundRect(x, y, width, height, 9);
  else ctx.rect(x, y, width, height);
  ctx.fill();
  ctx.fillStyle = "#ffffff";
  ctx.textBaseline = "middle";
  ctx.fillText(label, x + 6, y + height / 2);
}

function drawStatusLines(ctx, node, lines) {
  ctx.font = "12px sans-serif";
  ctx.fillStyle = "#d0d0d0";
  ctx.textBaseline = "middle";
  lines.forEach((line, index) => ctx.fillText(line, 4, node.size[1] + STATUS_LINE_HEIGHT * (index + 0.75)));
}

function drawOverlay(ctx, node) {
  if (node.flags?.collapsed || node.wan22.statusElement) return; // the DOM widget shows it
  const { device, progress, queue } = node.wan22;
  ctx.save();
  if (device) drawBadge(ctx, node, device);
  const lines = [progress, queue].filter(Boolean);
  if (lines.length) drawStatusLines(ctx, node, lines);
  ctx.restore();
}

function showReport(node, text) {
  const report = Array.isArray(text) ? text.join("\n") : String(text ?? "");
  if (!node.wan22.reportElement) {
    if (!node.addDOMWidget) return;
    const element = document.createElement("textarea");
    element.readOnly = true;
    element.style.cssText = "width:100%;min-height:120px;font:11px monospace;white-space:pre;";
    node.addDOMWidget("report", "wan22_report", element, { serialize: false });
    node.wan22.reportElement = element;
  }
  node.wan22.reportElement.value = report;
  node.wan22.report = report;
  node.setDirtyCanvas?.(true, true);
}

/** Calls `extra` after whatever `node[method]` did before (the node type's own handler keeps working). */
function chain(node, method, extra) {
  const original = node[method];
  node[method] = function (...args) {
    const result = original?.apply(this, args);
    extra.apply(this, args);
    return result;
  };
}

app.registerExtension({
  name: EXTENSION_NAME,

  setup() {
    api.addEventListener(EVENTS.device, ({ detail }) => updateNode(detail?.node, { device: deviceLabel(detail?.device) }));
    api.addEventListener(EVENTS.progress, ({ detail }) => {
      if (!detail) return;
      const changes = { progress: progressText(detail) };
      if (detail.device) changes.device = deviceLabel(detail.device);
      updateNode(detail.node, changes);
    });
    api.addEventListener(EVENTS.queue, ({ detail }) => detail && updateNode(detail.node, { queue: queueText(detail) }));
    // A new prompt starts: last run's progress no longer applies (the device badges stay until a node runs again).
    api.addEventListener("execution_start", () => {
      for (const node of trackedNodes) {
        node.wan22.progress = "";
        renderStatusWidget(node);
      }
      app.graph?.setDirtyCanvas?.(true, true);
    });
  },

  nodeCreated(node) {
    if (!isWan22Node(node)) return;
    node.wan22 = { device: "", progress: "", queue: "", report: "" };
    trackedNodes.add(node);
    renderStatusWidget(node); // Vue node mode: the (empty) status widget from the start, so the node keeps its size
    chain(node, "onDrawForeground", function (ctx) {
      drawOverlay(ctx, this);
    });
    chain(node, "onRemoved", function () {
      trackedNodes.delete(this);
    });
    if ((node.comfyClass ?? node.type) === REPORT_NODE) {
      chain(node, "onExecuted", function (output) {
        showReport(this, output?.text);
      });
    }
  },
});
