// signed-json-js: a generic signed-JSON webhook adapter for meterd, in
// JavaScript. The same contract as the Python plugin `signed-json-py`
// (see plugins/signed-json-py/app.py for the body and config); both pass
// the conformance cases in tests/conformance/signed-json/. Built with
// componentize-js (build.mjs) into a WebAssembly component that runs under
// meterd's locked-down WASI p2.

import { config } from 'meterd:provider/host@0.1.0';

const NAME = 'signed-json-js';
const VERSION = '0.1.0';
const DEFAULT_HEADER = 'x-meterd-signature';
const MAX_RECORDS = 1000;
const TIME = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,3}))?([Zz]|[+-]\d{2}:\d{2})$/;
const QUANTITY = /^-?\d+(\.\d+)?$/;

class AdapterError extends Error {
  constructor(tag, message) {
    super(message);
    this.payload = { tag, val: message };
  }
}
const malformed = (message) => new AdapterError('malformed', message);

// SHA-256 (FIPS 180-4) and HMAC (RFC 2104) over Uint8Array: the engine has
// no synchronous digest, and the body must be hashed byte for byte.
const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

function sha256(data) {
  const bitLength = data.length * 8;
  const padded = new Uint8Array(((data.length + 9 + 63) >> 6) << 6);
  padded.set(data);
  padded[data.length] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(bitLength / 0x100000000));
  view.setUint32(padded.length - 4, bitLength >>> 0);
  const h = new Uint32Array([
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
  ]);
  const w = new Uint32Array(64);
  const rotr = (x, n) => (x >>> n) | (x << (32 - n));
  for (let block = 0; block < padded.length; block += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(block + i * 4);
    for (let i = 16; i < 64; i++) {
      const s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >>> 3);
      const s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) >>> 0;
    }
    let [a, b, c, d, e, f, g, hh] = h;
    for (let i = 0; i < 64; i++) {
      const t1 = (hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i]) >>> 0;
      const t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) >>> 0;
      hh = g; g = f; f = e; e = (d + t1) >>> 0; d = c; c = b; b = a; a = (t1 + t2) >>> 0;
    }
    const add = [a, b, c, d, e, f, g, hh];
    for (let i = 0; i < 8; i++) h[i] = (h[i] + add[i]) >>> 0;
  }
  const out = new Uint8Array(32);
  const outView = new DataView(out.buffer);
  for (let i = 0; i < 8; i++) outView.setUint32(i * 4, h[i]);
  return out;
}

function hmacSha256Hex(key, message) {
  let k = key.length > 64 ? sha256(key) : key;
  const block = new Uint8Array(64);
  block.set(k);
  const inner = new Uint8Array(64 + message.length);
  const outer = new Uint8Array(64 + 32);
  for (let i = 0; i < 64; i++) {
    inner[i] = block[i] ^ 0x36;
    outer[i] = block[i] ^ 0x5c;
  }
  inner.set(message, 64);
  outer.set(sha256(inner), 64);
  return Array.from(sha256(outer), (b) => b.toString(16).padStart(2, '0')).join('');
}

// Compares without stopping at the first difference.
function sameText(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

function daysFromCivil(year, month, day) {
  year -= month <= 2 ? 1 : 0;
  const era = Math.floor((year >= 0 ? year : year - 399) / 400);
  const yoe = year - era * 400;
  const doy = Math.floor((153 * (month + (month > 2 ? -3 : 9)) + 2) / 5) + day - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  return era * 146097 + doe - 719468;
}

function daysInMonth(year, month) {
  if (month === 2) return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28;
  return [4, 6, 9, 11].includes(month) ? 30 : 31;
}

// RFC 3339 text -> milliseconds since the epoch (a BigInt: the WIT type is s64).
function parseTime(field, text) {
  if (typeof text !== 'string') throw malformed(`${field} must be RFC 3339 text`);
  const m = TIME.exec(text);
  if (m === null) throw malformed(`${field} ${JSON.stringify(text)} is not RFC 3339 with at most millisecond precision`);
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number);
  if (!(month >= 1 && month <= 12 && day >= 1 && day <= daysInMonth(year, month) && hour <= 23 && minute <= 59 && second <= 59)) {
    throw malformed(`${field} ${JSON.stringify(text)} is not a valid date and time`);
  }
  const millis = Number((m[7] ?? '0').padEnd(3, '0'));
  const zone = m[8];
  let offsetMin = 0;
  if (zone !== 'Z' && zone !== 'z') {
    offsetMin = (zone[0] === '-' ? -1 : 1) * (Number(zone.slice(1, 3)) * 60 + Number(zone.slice(4, 6)));
  }
  const seconds = daysFromCivil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second;
  return BigInt(seconds - offsetMin * 60) * 1000n + BigInt(millis);
}

function text(item, index, key) {
  const value = item[key];
  if (typeof value !== 'string' || value === '') throw malformed(`records[${index}].${key} must be non-empty text`);
  return value;
}

function toRecord(eventId, org, index, item) {
  if (item === null || typeof item !== 'object' || Array.isArray(item)) throw malformed(`records[${index}] must be an object`);
  const kind = text(item, index, 'kind');
  if (kind !== 'delta' && kind !== 'level') throw malformed(`records[${index}].kind must be "delta" or "level"`);
  const quantity = item.quantity;
  if (typeof quantity !== 'string' || !QUANTITY.test(quantity)) {
    throw malformed(`records[${index}].quantity must be decimal text such as "12.5" (not a JSON number)`);
  }
  const at = parseTime(`records[${index}].at`, item.at);
  const windowStart = item.window_start == null ? undefined : parseTime(`records[${index}].window_start`, item.window_start);
  const attributes = item.attributes ?? {};
  if (attributes === null || typeof attributes !== 'object' || Array.isArray(attributes)
      || !Object.values(attributes).every((v) => typeof v === 'string')) {
    throw malformed(`records[${index}].attributes must be an object of text values`);
  }
  const pairs = Object.entries(attributes).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return {
    eventId, orgId: org, subject: text(item, index, 'subject'), metric: text(item, index, 'metric'),
    kind, quantity, at, windowStart, attributes: pairs,
  };
}

function verify(headers, body) {
  const secret = config('signature_secret');
  if (!secret) throw new AdapterError('config', 'signature_secret is not configured');
  const name = (config('signature_header') || DEFAULT_HEADER).toLowerCase();
  const given = headers.find(([k]) => k === name);
  if (given === undefined) throw new AdapterError('unauthorized', `missing ${name} header`);
  if (!given[1].startsWith('sha256=')) {
    throw new AdapterError('unauthorized', `${name} must be sha256=<hex of HMAC-SHA256 of the body>`);
  }
  const expected = hmacSha256Hex(new TextEncoder().encode(secret), body);
  if (!sameText(given[1].slice('sha256='.length).trim().toLowerCase(), expected)) {
    throw new AdapterError('unauthorized', 'signature does not match the body');
  }
}

export const adapter = {
  info() {
    return {
      name: NAME,
      version: VERSION,
      capabilities: { push: true, pull: false },
      description: 'Generic HMAC-SHA256-signed JSON usage webhooks (JavaScript)',
    };
  },

  handleWebhook(req) {
    verify(req.headers, req.body);
    let doc;
    try {
      doc = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(req.body));
    } catch (e) {
      throw malformed(`body is not UTF-8 JSON: ${e.message}`);
    }
    if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw malformed('body must be a JSON object');
    const eventId = doc.id;
    const org = doc.org;
    if (typeof eventId !== 'string' || eventId === '') throw malformed('id must be non-empty text');
    if (typeof org !== 'string' || org === '') throw malformed('org must be non-empty text');
    if (!Array.isArray(doc.records)) throw malformed('records must be an array');
    if (doc.records.length > MAX_RECORDS) throw malformed(`at most ${MAX_RECORDS} records per delivery`);
    const records = doc.records.map((item, i) => toRecord(eventId, org, i, item));
    if (config('log_deliveries') === 'true') {
      console.log(`${NAME}: event ${eventId} for ${org}: ${records.length} records`);
    }
    return { eventId, records };
  },

  targets() {
    return [];
  },

  poll(_target, _cursor) {
    throw new AdapterError('unsupported', 'signed-json takes webhooks only');
  },
};
