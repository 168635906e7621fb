// The server's JSON API. Every call either returns the parsed answer or throws
// an Error whose message is the server's own (it names the setting or the
// line of the file at fault), ready to be shown on the page.

async function answer(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    throw new Error(`the server answered ${response.status} without JSON`);
  }
  if (!response.ok) {
    const err = new Error(body && body.error ? body.error : `HTTP ${response.status}`);
    err.status = response.status;
    throw err;
  }
  return body;
}

// fetch, with a network failure said in words (the server stopped, most likely)
async function request(path, options, failure) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Error(failure);
  }
  return answer(response);
}

const UNREACHABLE = "cannot reach the playground server (is `chainrule playground` still running?)";

export function post(path, payload) {
  return request(path, {
    method: "POST",
    // the custom header is what a cross-site form cannot send (see server.py)
    headers: { "Content-Type": "application/json", "X-Chainrule": "1" },
    body: JSON.stringify(payload),
  }, UNREACHABLE);
}

export function get(path) {
  return request(path, {}, UNREACHABLE);
}

export function upload(file) {
  return request(`/api/upload?name=${encodeURIComponent(file.name)}`, {
    method: "POST",
    headers: { "Content-Type": "text/csv", "X-Chainrule": "1" },
    body: file,
  }, "the upload did not reach the server");
}

// base64 of little-endian float32 / uint8 (what session.encode writes) -> typed array
export function decode(text, type = Float32Array) {
  const bin = atob(text);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new type(bytes.buffer);
}
