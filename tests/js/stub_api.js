// Test stand-in for ComfyUI's scripts/api.js: ComfyApi is an EventTarget that turns websocket messages into
// CustomEvents whose `detail` is the message data.
export const api = new EventTarget();
