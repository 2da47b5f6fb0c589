// Test-only extension loaded into the real ComfyUI frontend (tests/test_canvas_frontend.py serves it through its
// proxy): switches the canvas mode, loads a shipped template, replays the server events of one run and writes what
// the page shows into <pre id="wan22-probe"> for `chromium --dump-dom`.
import { app } from "../scripts/app.js";
import { api } from "../scripts/api.js";

const frames = (n) => new Promise((resolve) => {
  const step = (left) => (left ? requestAnimationFrame(() => step(left - 1)) : resolve());
  step(n);
});

async function probe() {
  const vue = new URLSearchParams(location.search).has("vue");
  const result = { vue, errors: [] };
  try {
    await app.extensionManager?.setting?.set?.("Comfy.VueNodes.Enabled", vue);
    const workflow = await (await fetch("api/workflow_templates/comfyui-wan22/wan22_t2v_a14b.json")).json();
    await app.loadGraphData(workflow);
    await frames(10);
    const drawn = [];
    const fillText = CanvasRenderingContext2D.prototype.fillText;
    CanvasRenderingContext2D.prototype.fillText = function (text, ...rest) {
      drawn.push(String(text));
      return fillText.call(this, text, ...rest);
    };
    const send = (type, detail) => api.dispatchEvent(new CustomEvent(type, { detail }));
    send("wan22.device", { node: "5", device: "cpu" });
    send("wan22.progress", { node: "6", device: "cuda:1", expert: "high_noise", step: 12, total: 40 });
    app.canvas.setDirty(true, true);
    app.canvas.draw?.(true, true);
    await frames(10);
    const sampler = app.graph.getNodeById(6);
    const element = document.querySelector('[data-node-id="6"]');
    Object.assign(result, {
      frontend: window.__COMFYUI_FRONTEND_VERSION__ ?? null,
      vueNodesMode: Boolean(window.LiteGraph?.vueNodesMode),
      progress: sampler?.wan22?.progress ?? null,
      samplerDomText: element ? element.textContent.replace(/\s+/g, " ") : null,
      t5DomText: document.querySelector('[data-node-id="5"]')?.textContent.replace(/\s+/g, " ") ?? null,
      drawn: drawn.filter((text) => /GPU|CPU|step/.test(text)),
    });
  } catch (error) {
    result.errors.push(String(error?.stack ?? error));
  }
  const pre = document.createElement("pre");
  pre.id = "wan22-probe";
  pre.textContent = JSON.stringify(result);
  document.body.append(pre);
}

app.registerExtension({
  name: "comfyui-wan22.frontend-probe",
  async afterConfigureGraph() {},
  async setup() {
    setTimeout(probe, 500);
  },
});
