// A case's data (report, image manifest, labs) and its pictures (rendered frame + overlay, fetched with the
// token and decoded before they are shown), kept in small LRU caches so that the next case is ready before the
// reader asks for it.
import { getBlob, getJSON, query } from './api.js';

const CASES = new Map(); // `${id}@${vp}` -> Promise<CaseData>
const PICTURES = new Map(); // url -> Promise<HTMLImageElement>
const LABS = new Map(); // patient id -> Promise<Observation[]>
const MAX_CASES = 8;
const MAX_PICTURES = 40;
const MAX_LABS = 64;
/** Rendered sizes asked for (the longer side, device pixels): few steps, so prefetches match what is shown. */
const STEPS = [512, 768, 1024, 1536, 2048];

function remember(map, key, make, max, dispose) {
  if (map.has(key)) {
    const value = map.get(key);
    map.delete(key);
    map.set(key, value); // most recent last
    return value;
  }
  const value = make();
  map.set(key, value);
  value.catch(() => map.delete(key)); // a failure is not kept: the next ask tries again
  while (map.size > max) {
    const [oldest, old] = map.entries().next().value;
    map.delete(oldest);
    if (dispose) old.then(dispose, () => {});
  }
  return value;
}

/** The viewport (one number: a square) to ask for, from the stage's size, or the window's before it shows. */
export function viewportFor(stage) {
  const dpr = window.devicePixelRatio || 1;
  const w = stage?.clientWidth || window.innerWidth * 0.45;
  const hgt = stage?.clientHeight || window.innerHeight - 170;
  const need = Math.max(w, hgt) * dpr;
  return STEPS.find((s) => s >= need * 0.9) || STEPS[STEPS.length - 1];
}

/** A picture fetched with the token, decoded (so showing it costs no decode). */
export function picture(url, accept) {
  return remember(PICTURES, url, async () => {
    const blob = await getBlob(url, accept);
    const img = new Image();
    img.alt = '';
    img.decoding = 'sync';
    img.src = URL.createObjectURL(blob);
    await img.decode();
    return img;
  }, MAX_PICTURES, (img) => URL.revokeObjectURL(img.src));
}

export function frameUrl(image, vp) {
  return `${image.rendered}?viewport=${vp},${vp}`;
}

export function overlayUrl(overlay, vp) {
  return `${overlay.url}?viewport=${vp},${vp}`;
}

/** The rendered image and (when given) the overlay for it, both decoded. */
export async function loadFrame(image, overlay, vp) {
  const [img, ovl] = await Promise.all([
    picture(frameUrl(image, vp), 'image/jpeg'),
    overlay ? picture(overlayUrl(overlay, vp), 'image/png') : null,
  ]);
  return { img, ovl };
}

/** The overlay to show first on an image: the heat-map of its most probable present finding, else its most
 * probable heat-map, else its segmentation. */
export function defaultOverlay(image) {
  const list = image?.overlays || [];
  const heat = list.filter((o) => o.kind === 'heatmap')
    .sort((a, b) => (b.present - a.present) || (b.probability - a.probability));
  return heat[0] || list.find((o) => o.kind === 'segmentation') || null;
}

export function labsFor(patientId) {
  if (!patientId) return Promise.resolve([]);
  return remember(LABS, patientId, async () => {
    const patients = await getJSON(`/fhir/Patient${query({ identifier: patientId, _count: 20 })}`);
    const ids = (patients.entry || []).map((e) => e.resource.id);
    if (!ids.length) return [];
    const bundle = await getJSON(`/fhir/Observation${query({
      patient: ids.join(','), category: 'laboratory', _sort: '-date', _count: 20 })}`);
    return (bundle.entry || []).map((e) => e.resource);
  }, MAX_LABS);
}

/**
 * Everything the case view shows for report `id`, with the first image and its overlay decoded at `vp`.
 * Labs that can't be read don't stop the case (labs.error says why).
 */
export function loadCase(id, vp) {
  return remember(CASES, `${id}@${vp}`, async () => {
    const [report, manifest] = await Promise.all([
      getJSON(`/api/reports/${id}`), getJSON(`/api/reports/${id}/overlays`)]);
    const labs = labsFor(report.patient_id).catch((e) => ({ error: e.message }));
    const index = manifest.initial_image;
    const image = index == null ? null : manifest.images[index];
    const overlay = defaultOverlay(image);
    const frame = image ? await loadFrame(image, overlay, vp) : null;
    return { report, manifest, labs: await labs, index, overlay: overlay?.name ?? null, frame };
  }, MAX_CASES);
}

/** Drop what is kept of report `id` (after a verdict its status and sign-offs changed). */
export function forgetCase(id) {
  for (const key of [...CASES.keys()]) if (key.startsWith(`${id}@`)) CASES.delete(key);
}

export function prefetch(id, vp) {
  if (id != null) loadCase(id, vp).catch(() => {});
}
