// The one way the pages talk to the JSON API: JSON in and out, the session cookie, and the
// CSRF token in the X-CSRFToken header. Any answer that is not 2xx becomes an ApiError.

const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);

export class ApiError extends Error {
  constructor({ status, code, message, fields = {}, retryAfter = null }) {
    super(message);
    this.name = "ApiError";
    this.status = status; // 0 when the server was never reached
    this.code = code;
    this.fields = fields;
    this.retryAfter = retryAfter; // seconds, from Retry-After, or null
  }
}

function readCookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...value] = part.trim().split("=");
    if (key === name) return decodeURIComponent(value.join("="));
  }
  return null;
}

// Pages with a form already have the cookie; other pages ask for it once, and callers that
// arrive while that request is out share it.
let csrfRequest = null;

async function csrfToken() {
  const token = readCookie("csrftoken");
  if (token) return token;
  csrfRequest ??= fetch("/api/auth/csrf", { credentials: "same-origin" }).finally(() => {
    csrfRequest = null;
  });
  await csrfRequest;
  return readCookie("csrftoken") ?? "";
}

// crypto.randomUUID exists only in secure contexts (https, localhost); the fallback builds the
// same version-4 UUID from getRandomValues, which exists everywhere.
export function newClientId() {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// Retry-After is either a number of seconds or an HTTP date.
export function parseRetryAfter(value) {
  if (value == null || value.trim() === "") return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

async function readJson(response) {
  const type = response.headers.get("Content-Type") ?? "";
  if (response.status === 204 || !type.includes("application/json")) return null;
  try {
    return await response.json();
  } catch {
    return null;
  }
}

export async function api(path, { method = "GET", body } = {}) {
  method = method.toUpperCase();
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";

  let response;
  try {
    if (!SAFE_METHODS.has(method)) headers["X-CSRFToken"] = await csrfToken();
    response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError({ status: 0, code: "network", message: "Could not reach the server. Check your connection." });
  }

  const data = await readJson(response);
  if (!response.ok) {
    const error = data?.error ?? {};
    throw new ApiError({
      status: response.status,
      code: error.code ?? `http_${response.status}`,
      message: error.message ?? `The server answered ${[response.status, response.statusText].join(" ").trim()}.`,
      fields: error.fields ?? {},
      retryAfter: parseRetryAfter(response.headers.get("Retry-After")),
    });
  }
  return data;
}
