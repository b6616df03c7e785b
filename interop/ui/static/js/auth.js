// SMART App Launch 2.x for the worklist, through the vendored fhirclient (window.FHIR).
//
// Standalone launch: with no session in this tab, authorize at this node (iss = <origin>/fhir, which is also the
// aud), PKCE S256, redirect back to "/". EHR launch: /launch.html?iss=...&launch=... authorizes at the EHR's
// server (launch.js); back on "/", ready() exchanges the code there and the token response's `patient` names
// the EHR's Patient, whose identifiers select this patient's results here.
//
// fhirclient keeps a finished sign-in in sessionStorage (SMART_KEY -> state key -> {serverUrl, tokenResponse,
// expiresAt, ...}). A page load that finds one uses it as it is and loads the library only when it is needed
// (a sign-in, a token refresh): 220 kB of script less to compile before the list can show.

export const CLIENT_ID = 'interop-worklist';
const USER_SCOPES = 'openid fhirUser user/*.rs user/DiagnosticReport.rus user/Observation.rus '
  + 'user/ServiceRequest.rus user/Task.rus';
export const STANDALONE_SCOPE = USER_SCOPES;
export const EHR_SCOPE = `launch ${USER_SCOPES}`;
export const SIGNING_ROLES = ['radiologist', 'physician'];

export const ownFhirBase = () => `${location.origin}/fhir`;
export const redirectUri = () => `${location.origin}/`;

export class AuthError extends Error {}

/** Decode a JWT's claims without checking them (display only: the server checks every token). */
export function jwtClaims(token) {
  try {
    const part = String(token).split('.')[1];
    if (!part) return {};
    const text = atob(part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '='));
    return JSON.parse(decodeURIComponent(Array.from(text, (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`).join('')));
  } catch {
    return {};
  }
}

/** Does a SMART scope string grant permission p (one of c r u d s) on resource type? v2 (.cruds) and v1
 * (.read/.write/.*) forms, any context (patient/user/system). */
export function scopeAllows(scopeText, resource, p) {
  for (const s of String(scopeText || '').split(/\s+/)) {
    const m = /^(patient|user|system)\/([A-Za-z*]+)\.([a-z*]+)(\?.*)?$/.exec(s);
    if (!m || (m[2] !== '*' && m[2] !== resource)) continue;
    const perms = m[3];
    if (perms === '*' || (perms === 'read' && 'rs'.includes(p)) || (perms === 'write' && 'cud'.includes(p))) return true;
    if (/^c?r?u?d?s?$/.test(perms) && perms.includes(p)) return true;
  }
  return false;
}

const LIBRARY = new URL('../vendor/fhir-client.min.js', import.meta.url).href;
let library = null;

/** window.FHIR, loading the vendored library first when this page has not (launch.html has). */
export function fhir() {
  if (window.FHIR) return Promise.resolve(window.FHIR);
  library ??= new Promise((resolve, reject) => {
    const script = document.createElement('script');
    script.src = LIBRARY;
    script.onload = () => (window.FHIR ? resolve(window.FHIR) : reject(new AuthError('The SMART client library is broken.')));
    script.onerror = () => { library = null; reject(new AuthError(`The SMART client library did not load (${LIBRARY}).`)); };
    document.head.append(script);
  });
  return library;
}

/** Start a standalone launch at this node (navigates away). */
export async function authorizeHere() {
  return (await fhir()).oauth2.authorize({
    iss: ownFhirBase(), clientId: CLIENT_ID, scope: STANDALONE_SCOPE, redirectUri: redirectUri(), pkceMode: 'required',
  });
}

/** The sign-in fhirclient kept in this tab, or null. */
function storedState() {
  try {
    const key = JSON.parse(sessionStorage.getItem('SMART_KEY') || 'null');
    return key ? JSON.parse(sessionStorage.getItem(key) || 'null') : null;
  } catch {
    return null;
  }
}

export function forget() {
  const key = sessionStorage.getItem('SMART_KEY');
  if (key) {
    try { sessionStorage.removeItem(JSON.parse(key)); } catch { /* not ours */ }
  }
  sessionStorage.removeItem('SMART_KEY');
}

export class Session {
  /** state: fhirclient's state of a finished sign-in; client: its Client, made when first needed. */
  constructor(state, client = null) {
    this.state = state;
    this.client = client;
  }

  async fhirClient() {
    this.client ??= (await fhir()).client(this.state);
    return this.client;
  }

  get tokenResponse() { return this.state.tokenResponse || {}; }
  get accessToken() { return this.tokenResponse.access_token || null; }
  get claims() { return jwtClaims(this.accessToken); }
  get scope() { return this.tokenResponse.scope || this.claims.scope || ''; }
  get serverUrl() { return String(this.state.serverUrl || '').replace(/\/+$/, ''); }
  /** Launched by an EHR: the FHIR server we authorized at is not this node's. */
  get fromEhr() { return this.serverUrl !== ownFhirBase(); }
  get patientContext() { return this.tokenResponse.patient || null; }

  get userName() {
    const c = this.claims;
    const id = jwtClaims(this.tokenResponse.id_token);
    return c.name || id.name || c.fhirUser || id.fhirUser || c.sub || 'unknown user';
  }

  get role() { return this.claims.role || null; }

  /** [allowed, why not]: radiologists and physicians sign; the server checks again. */
  signing() {
    const role = this.role;
    if (role) {
      if (SIGNING_ROLES.includes(role)) return [true, ''];
      return [false, `Signing is for radiologists and physicians; you are signed in as ${role}.`];
    }
    if (scopeAllows(this.scope, 'DiagnosticReport', 'u')) return [true, ''];
    return [false, 'Your sign-in does not allow signing reports (it grants no write access to DiagnosticReport).'];
  }

  /** The access token, refreshed first when it is about to expire and a refresh token allows. */
  async token() {
    const expiresAt = this.state.expiresAt;
    if (expiresAt && expiresAt - Date.now() / 1000 < 30) {
      if (this.tokenResponse.refresh_token) {
        try {
          const client = await this.fhirClient();
          await client.refresh(); // fhirclient keeps the new tokens in its state and in sessionStorage
          this.state = client.state;
        } catch (e) {
          throw new AuthError(`Your session has ended and could not be renewed (${e.message}).`);
        }
      } else if (expiresAt < Date.now() / 1000) {
        throw new AuthError('Your session has ended.');
      }
    }
    if (!this.accessToken) throw new AuthError('Not signed in.');
    return this.accessToken;
  }

  /** The launch patient's identifier values, read from the server that launched us (the EHR's Patient). */
  async patientIdentifiers() {
    const id = this.patientContext;
    if (!id) return [];
    const r = await fetch(`${this.serverUrl}/Patient/${encodeURIComponent(id)}`, {
      headers: { Authorization: `Bearer ${await this.token()}`, Accept: 'application/fhir+json' } });
    if (!r.ok) throw new Error(`${r.status} ${r.statusText}`);
    const patient = await r.json();
    const values = (patient.identifier || []).map((i) => i.value).filter(Boolean);
    return [...new Set(values)];
  }
}

/**
 * The session of this tab: revives the sign-in kept in sessionStorage, completes one that just came back (code
 * in the URL), or starts a standalone launch (returns null: the page is navigating away).
 */
export async function start() {
  const params = new URLSearchParams(location.search);
  const returning = params.has('code') || params.has('error') || params.has('state');
  if (!returning) {
    const state = storedState();
    if (state?.tokenResponse?.access_token) return new Session(state);
    if (!state) {
      await authorizeHere();
      return null;
    }
  }
  let client;
  try {
    client = await (await fhir()).oauth2.ready();
  } catch (e) {
    throw new AuthError(`Sign-in failed: ${e.message}`);
  }
  const session = new Session(client.state, client);
  if (!session.accessToken) {
    throw new AuthError('Sign-in did not give an access token: this node publishes no authorization endpoint '
      + '(/fhir/.well-known/smart-configuration), or the sign-in was refused.');
  }
  return session;
}
