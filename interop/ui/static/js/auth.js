// SMART App Launch 2.x for the worklist, through the vendored fhirclient (window.FHIR).
//
// Standalone launch: with no session in this tab, authorize at this node (iss = <origin>/fhir, which is also the
// aud), PKCE S256, redirect back to "/". EHR launch: /launch.html?iss=...&launch=... authorizes at the EHR's
// server (launch.js); back on "/", ready() exchanges the code there and the token response's `patient` names
// the EHR's Patient, whose identifiers select this patient's results here.
//
// fhirclient keeps its state in sessionStorage (SMART_KEY -> state key -> {serverUrl, tokenResponse, ...});
// this module reads the session only through FHIR.oauth2.ready().

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

function fhir() {
  if (!window.FHIR) throw new AuthError('The SMART client library did not load (/ui/vendor/fhir-client.min.js).');
  return window.FHIR;
}

/** Start a standalone launch at this node (navigates away). */
export function authorizeHere() {
  return fhir().oauth2.authorize({
    iss: ownFhirBase(), clientId: CLIENT_ID, scope: STANDALONE_SCOPE, redirectUri: redirectUri(), pkceMode: 'required',
  });
}

export function forget() {
  const key = sessionStorage.getItem('SMART_KEY');
  if (key) {
    try { sessionStorage.removeItem(JSON.parse(key)); } catch { /* not ours */ }
  }
  sessionStorage.removeItem('SMART_KEY');
}

export class Session {
  constructor(client) {
    this.client = client;
    this.lostListeners = [];
  }

  get tokenResponse() { return this.client.state.tokenResponse || {}; }
  get accessToken() { return this.tokenResponse.access_token || null; }
  get claims() { return jwtClaims(this.accessToken); }
  get scope() { return this.tokenResponse.scope || this.claims.scope || ''; }
  get serverUrl() { return String(this.client.state.serverUrl || '').replace(/\/+$/, ''); }
  /** Launched by an EHR: the FHIR server we authorized at is not this node's. */
  get fromEhr() { return this.serverUrl !== ownFhirBase(); }
  get patientContext() { return this.tokenResponse.patient || null; }

  get userName() {
    const c = this.claims;
    let id = {};
    try { id = this.client.getIdToken() || {}; } catch { /* no id_token */ }
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
    const expiresAt = this.client.state.expiresAt;
    if (expiresAt && expiresAt - Date.now() / 1000 < 30) {
      if (this.tokenResponse.refresh_token) {
        try {
          await this.client.refresh();
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
    const patient = await this.client.request(`Patient/${encodeURIComponent(id)}`);
    const values = (patient.identifier || []).map((i) => i.value).filter(Boolean);
    return [...new Set(values)];
  }
}

/**
 * The session of this tab: completes an authorization that just came back (code in the URL), revives one kept
 * in sessionStorage, or starts a standalone launch (returns null: the page is navigating away).
 */
export async function start() {
  const params = new URLSearchParams(location.search);
  const returning = params.has('code') || params.has('error') || params.has('state');
  if (!returning && !sessionStorage.getItem('SMART_KEY')) {
    await authorizeHere();
    return null;
  }
  let client;
  try {
    client = await fhir().oauth2.ready();
  } catch (e) {
    throw new AuthError(`Sign-in failed: ${e.message}`);
  }
  const session = new Session(client);
  if (!session.accessToken) {
    throw new AuthError('Sign-in did not give an access token: this node publishes no authorization endpoint '
      + '(/fhir/.well-known/smart-configuration), or the sign-in was refused.');
  }
  return session;
}
