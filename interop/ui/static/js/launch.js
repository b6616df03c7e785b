// SMART EHR launch: /launch.html?iss=<EHR FHIR base>&launch=<opaque id>. fhirclient reads iss and launch from
// the URL, discovers the EHR's endpoints (.well-known/smart-configuration), and sends the browser to its
// authorization endpoint with PKCE S256; the code comes back to "/" (the worklist), which completes the sign-in.
import { CLIENT_ID, EHR_SCOPE, redirectUri } from './auth.js';

const state = document.getElementById('launch-state');
const params = new URLSearchParams(location.search);
if (!params.get('iss') || !params.get('launch')) {
  state.textContent = 'This page is opened by an EHR with ?iss=<its FHIR base>&launch=<launch id>. '
    + 'To sign in here, open the worklist.';
  state.append(' ', Object.assign(document.createElement('a'), { href: '/', textContent: 'Open the worklist' }));
} else if (!window.FHIR) {
  state.textContent = 'The SMART client library did not load.';
} else {
  window.FHIR.oauth2.authorize({ clientId: CLIENT_ID, scope: EHR_SCOPE, redirectUri: redirectUri(), pkceMode: 'required' })
    .catch((e) => { state.textContent = `Could not start the sign-in at ${params.get('iss')}: ${e.message}`; });
}
