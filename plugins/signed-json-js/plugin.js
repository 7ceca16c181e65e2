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

// HMAC-SHA256 through the engine's WebCrypto (native code; a SHA-256
// written in JavaScript cost ~2.4 ms a call in the interpreter).
async function verify(headers, body) {
  const secret = config('signature_secret');
  if (!secret) throw new AdapterError('config', 'signature_secret is not configured');
  const name = (config('signature_header') || DEFAULT_HEADER).toLowerCase();
  const given = headers.find(([k]) => k === name);
  if (given === undefined) throw new AdapterError('unauthorized', `missing ${name} header`);
  if (!given[1].startsWith('sha256=')) {
    throw new AdapterError('unauthorized', `${name} must be sha256=<hex of HMAC-SHA256 of the body>`);
  }
  const key = await crypto.subtle.importKey('raw', new TextEncoder().encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  const mac = new Uint8Array(await crypto.subtle.sign('HMAC', key, body));
  const expected = Array.from(mac, (b) => b.toString(16).padStart(2, '0')).join('');
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

  // Async for WebCrypto; componentize-js runs the promise to completion
  // inside the call, so the export stays a plain synchronous function.
  async handleWebhook(req) {
    await verify(req.headers, req.body);
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
