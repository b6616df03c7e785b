// Calls to this node with the session's bearer token. Errors carry the server's words (OperationOutcome).
import { AuthError } from './auth.js';

let session = null;
const lost = [];

export function useSession(s) { session = s; }
/** f(message) when the server refuses the token (401) or it can't be renewed. */
export function onAuthLost(f) { lost.push(f); }

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function errorOf(r) {
  let text = `${r.status} ${r.statusText}`;
  try {
    const body = await r.json();
    const issues = (body.issue || []).map((i) => i.diagnostics || i.details?.text).filter(Boolean);
    if (issues.length) text = issues.join('; ');
    else if (body.detail) text = typeof body.detail === 'string' ? body.detail : JSON.stringify(body.detail);
  } catch { /* not JSON */ }
  return new ApiError(r.status, text);
}

async function call(path, { method = 'GET', body, accept = 'application/json', signal } = {}) {
  let token;
  try {
    token = await session.token();
  } catch (e) {
    if (e instanceof AuthError) lost.forEach((f) => f(e.message));
    throw e;
  }
  const headers = { Authorization: `Bearer ${token}`, Accept: accept };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
  if (!r.ok) {
    const err = await errorOf(r);
    if (r.status === 401) lost.forEach((f) => f(err.message));
    throw err;
  }
  return r;
}

export const getJSON = async (path, opts) => (await call(path, opts)).json();
export const postJSON = async (path, body) => (await call(path, { method: 'POST', body })).json();
export const getBlob = async (path, accept, opts) => (await call(path, { ...opts, accept })).blob();

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}
