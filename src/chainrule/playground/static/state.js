// The whole set-up lives in the URL's fragment (#dataset=xor&hidden=8,8&lr=0.03...),
// so that a link reproduces it: the same data (same seed), the same network, the
// same initial weights. The server validates every value (config.py); the page
// only reads and writes the text.

export function readFragment() {
  const params = {};
  const text = window.location.hash.replace(/^#/, "");
  if (!text) return params;
  for (const part of text.split("&")) {
    if (!part) continue;
    const i = part.indexOf("=");
    const key = decodeURIComponent(i < 0 ? part : part.slice(0, i));
    const value = i < 0 ? "1" : decodeURIComponent(part.slice(i + 1));
    params[key] = value;
  }
  return params;
}

// Write the settings that differ from the defaults (short, readable links);
// replaceState keeps the back button for real navigation.
export function writeFragment(params, defaults) {
  const parts = [];
  for (const [key, value] of Object.entries(params)) {
    if (defaults && defaults[key] === value) continue;
    parts.push(`${encodeURIComponent(key)}=${encodeURIComponent(value).replace(/%2C/g, ",")}`);
  }
  const hash = parts.length ? "#" + parts.join("&") : "";
  const url = window.location.pathname + window.location.search + hash;
  window.history.replaceState(null, "", url);
  return window.location.href;
}
