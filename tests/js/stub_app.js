// Test stand-in for ComfyUI's scripts/app.js: just what js/wan22.js uses (registerExtension and the graph).
export const app = {
  extensions: [],
  registerExtension(extension) {
    this.extensions.push(extension);
  },
  graph: {
    nodes: new Map(),
    getNodeById(id) {
      return this.nodes.get(String(id)) ?? null;
    },
    setDirtyCanvas() {},
  },
};
