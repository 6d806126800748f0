// Test-only OAuth2 provider for sidekey's integration tests, built on the real
// `oidc-provider` package (pinned in package.json). Client-credentials grant only.
//
// Config (env):
//   OIDC_PORT         HTTP port on 127.0.0.1; 0 or unset = a free port chosen by the OS.
//   OIDC_TOKEN_TTL    access-token lifetime in seconds (default 8).
//   OIDC_CLIENTS      JSON array of {client_id, client_secret, token_endpoint_auth_method}
//                     (client_secret_basic | client_secret_post; default client_secret_basic).
//                     Extra client metadata fields are passed through to oidc-provider.
//                     Default: [{"client_id":"sidekey","client_secret":"sidekey-secret"}].
//                     private_key_jwt clients have no client_secret but `jwks`, or
//                     `public_key_pem` (a PEM public key or an array of them, turned into
//                     the client's JWKS here).
//   OIDC_EXCHANGE_SUBJECT_KEY  PEM public key that verifies subject tokens at POST /exchange,
//                     a token-exchange endpoint of this test server's own (RFC 8693 wire
//                     format; oidc-provider has no token exchange): unset = no /exchange.
//   OIDC_RESOURCE     default resource indicator, also the default `aud` (default urn:sidekey:test).
//   OIDC_SCOPES       space-separated scopes the resource server knows (default "read write").
//   OIDC_HTTPS_PORT   if set (0 = free port), also serve the same provider over HTTPS with a
//                     CA + leaf certificate generated at start (needs the `openssl` CLI).
//   OIDC_STRICT_AUTH_METHOD  default 1: a client must authenticate with its registered method
//                     (Basic header vs client_id/client_secret in the form body), else 401
//                     invalid_client. 0 = oidc-provider's own behaviour (accepts either).
//   OIDC_EXIT_WITH_PARENT    default 1: exit (code 0) once the parent process is gone.
//   OIDC_TLS_DIR      where ca.pem/server.pem/server.key are written (default: a temp dir,
//                     removed on exit).
//
// Stdout: exactly one line, a JSON object, once every listener is up. Everything else
// (oidc-provider notices, one JSON line per token request) goes to stderr.

import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as os from 'node:os';
import * as path from 'node:path';

// oidc-provider prints its notices with console.info, i.e. to stdout; keep stdout for the
// ready line only.
console.info = console.error;
console.log = console.error;

// Install the signal handlers before anything slow, so SIGTERM always means exit code 0.
const servers = [];
let tlsCleanup;
let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  for (const s of servers) {
    s.close();
    s.closeAllConnections();
  }
  tlsCleanup?.();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

// RSA key generation runs on the thread pool while the modules load.
const keyPair = new Promise((resolve, reject) => {
  crypto.generateKeyPair('rsa', { modulusLength: 2048 }, (err, _pub, priv) => (err ? reject(err) : resolve(priv)));
});

const { default: Provider, errors } = await import('oidc-provider');
// Not part of the public API (the package has no "exports" map, the version is pinned): used
// to register the client_credentials grant again with an extra `audience` parameter.
const clientCredentials = await import('oidc-provider/lib/actions/grants/client_credentials.js');
const grantHelpers = await import('oidc-provider/lib/helpers/grants.js');

const HOST = '127.0.0.1';

function fail(msg) {
  process.stderr.write(`oidc test server: ${msg}\n`);
  tlsCleanup?.();
  process.exit(2);
}

function intEnv(name, dflt, min) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return dflt;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) fail(`${name} must be an integer >= ${min}, got ${JSON.stringify(raw)}`);
  return n;
}

const port = intEnv('OIDC_PORT', 0, 0);
const ttl = intEnv('OIDC_TOKEN_TTL', 8, 1);
const httpsPort = process.env.OIDC_HTTPS_PORT === undefined || process.env.OIDC_HTTPS_PORT === ''
  ? undefined : intEnv('OIDC_HTTPS_PORT', 0, 0);
const defaultResource = process.env.OIDC_RESOURCE || 'urn:sidekey:test';
const strictAuthMethod = process.env.OIDC_STRICT_AUTH_METHOD !== '0';
const resourceScopes = (process.env.OIDC_SCOPES || 'read write').split(/\s+/).filter(Boolean).join(' ');

let clientsIn;
try {
  clientsIn = JSON.parse(process.env.OIDC_CLIENTS
    || '[{"client_id":"sidekey","client_secret":"sidekey-secret"}]');
} catch (e) {
  fail(`OIDC_CLIENTS is not valid JSON: ${e.message}`);
}
if (!Array.isArray(clientsIn) || clientsIn.length === 0) fail('OIDC_CLIENTS must be a non-empty JSON array');
const clients = clientsIn.map((c, i) => {
  const method = c?.token_endpoint_auth_method || 'client_secret_basic';
  const byKey = method === 'private_key_jwt';
  if (!c || typeof c.client_id !== 'string' || (!byKey && typeof c.client_secret !== 'string')) {
    fail(`OIDC_CLIENTS[${i}] needs string client_id and client_secret`);
  }
  if (!['client_secret_basic', 'client_secret_post', 'private_key_jwt'].includes(method)) {
    fail(`OIDC_CLIENTS[${i}].token_endpoint_auth_method must be client_secret_basic, client_secret_post or private_key_jwt`);
  }
  const { public_key_pem: pems, ...rest } = c;
  if (byKey && !rest.jwks && !pems) fail(`OIDC_CLIENTS[${i}]: private_key_jwt needs jwks or public_key_pem`);
  if (pems) {
    try {
      rest.jwks = {
        keys: [pems].flat().map((pem) => ({ ...crypto.createPublicKey(pem).export({ format: 'jwk' }), use: 'sig' })),
      };
    } catch (e) {
      fail(`OIDC_CLIENTS[${i}].public_key_pem: ${e.message}`);
    }
  }
  return {
    ...rest,
    token_endpoint_auth_method: method,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  };
});

// Listen first (port 0 is resolved by the OS), then build the provider with the real issuer.
function listen(server, p) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(p, HOST, () => {
      server.off('error', reject);
      resolve(server.address().port);
    });
  });
}

const stats = { token_requests: 0, tokens_issued: 0, token_errors: 0, exchanges: 0, last_exchange: null };
let handler = (_req, res) => { res.statusCode = 503; res.end(); };
let exchangeHandler;
const route = (req, res) => {
  if (req.method === 'GET' && req.url === '/_stats') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(stats));
    return;
  }
  if (req.url === '/exchange' && exchangeHandler) {
    exchangeHandler(req, res);
    return;
  }
  if (req.url === '/token' || req.url.startsWith('/token?')) stats.token_requests += 1;
  handler(req, res);
};

const httpServer = http.createServer(route);
servers.push(httpServer);
let actualPort;
try {
  actualPort = await listen(httpServer, port);
} catch (e) {
  fail(`cannot listen on ${HOST}:${port}: ${e.message}`);
}
const issuer = `http://${HOST}:${actualPort}`;

// TLS material: a CA and a leaf for 127.0.0.1/localhost signed by it (rustls/webpki reject a
// self-signed CA certificate used directly as the server certificate).
let tlsDir;
let httpsServer;
let actualHttpsPort;
if (httpsPort !== undefined) {
  if (process.env.OIDC_TLS_DIR) {
    tlsDir = process.env.OIDC_TLS_DIR;
    fs.mkdirSync(tlsDir, { recursive: true });
  } else {
    tlsDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sidekey-oidc-tls-'));
    tlsCleanup = () => fs.rmSync(tlsDir, { recursive: true, force: true });
  }
  const f = (n) => path.join(tlsDir, n);
  const ossl = (...args) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  try {
    ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '2', '-subj', '/CN=sidekey test CA',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
    ossl('req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=127.0.0.1');
    fs.writeFileSync(f('server.ext'), [
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature',
      'extendedKeyUsage=serverAuth',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
      '',
    ].join('\n'));
    ossl('x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'),
      '-CAcreateserial', '-days', '2', '-extfile', f('server.ext'), '-out', f('server.pem'));
  } catch (e) {
    fail(`generating the TLS certificate with openssl failed: ${e.stderr?.toString() || e.message}`);
  }
  httpsServer = https.createServer({
    key: fs.readFileSync(f('server.key')),
    cert: fs.readFileSync(f('server.pem')),
  }, route);
  servers.push(httpsServer);
  try {
    actualHttpsPort = await listen(httpsServer, httpsPort);
  } catch (e) {
    fail(`cannot listen (https) on ${HOST}:${httpsPort}: ${e.message}`);
  }
}

// Signing key for the JWT access tokens, new on each start.
const privateKey = await keyPair;
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), use: 'sig', alg: 'RS256' };

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [jwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Requests without `resource` get this one, so every token is a JWT.
      defaultResource: () => defaultResource,
      // Any absolute URI is accepted as a resource indicator. The `aud` claim is the
      // `audience` parameter when given, else the resource indicator.
      getResourceServerInfo: (ctx, resourceIndicator) => ({
        scope: resourceScopes,
        audience: ctx?.oidc?.params?.audience || resourceIndicator,
        accessTokenTTL: ttl,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  ttl: {
    ClientCredentials: () => ttl,
    AccessToken: () => ttl,
  },
});

// Register client_credentials again, as oidc-provider does itself (initialize_app.js), with
// `audience` added to the parameters it keeps (the token endpoint drops unknown parameters)
// and the strict client-authentication-method check.
{
  const helpers = Object.fromEntries(
    Object.entries(grantHelpers).map(([name, fn]) => [name, fn.bind(undefined, provider)]),
  );
  const original = clientCredentials.handler.bind(undefined, provider, helpers);
  provider.registerGrantType(
    clientCredentials.grantType,
    // oidc-provider accepts Basic and form-body secrets alike for either registered method;
    // by default hold each client to the method it was registered with.
    async (ctx) => {
      const usedBasic = ctx.headers.authorization !== undefined;
      const method = ctx.oidc.client.clientAuthMethod;
      if (strictAuthMethod && usedBasic !== (method === 'client_secret_basic')) {
        throw new errors.InvalidClientAuth(`client must authenticate with ${method}`);
      }
      return original(ctx);
    },
    [...clientCredentials.parameters, 'resource', 'audience'],
    ['resource'],
  );
}

const log = (obj) => process.stderr.write(`${JSON.stringify(obj)}\n`);
provider.on('grant.success', (ctx) => {
  stats.tokens_issued += 1;
  log({ event: 'token', client_id: ctx.oidc.client?.clientId, scope: ctx.body?.scope, expires_in: ctx.body?.expires_in });
});
provider.on('grant.error', (ctx, err) => {
  stats.token_errors += 1;
  log({ event: 'token_error', client_id: ctx.oidc?.client?.clientId, error: err.error, description: err.error_description, detail: err.error_detail });
});
provider.on('server_error', (_ctx, err) => log({ event: 'server_error', error: String(err?.stack || err) }));

handler = provider.callback();

// RFC 8693 token exchange, this test server's own: the subject token must be a JWT signed by
// OIDC_EXCHANGE_SUBJECT_KEY and unexpired; the answer is an opaque access token. The request's
// parameters (never its tokens) and the issued token's SHA-256 go to /_stats.
if (process.env.OIDC_EXCHANGE_SUBJECT_KEY) {
  const { jwtVerify } = await import('jose');
  let subjectKey;
  try {
    subjectKey = crypto.createPublicKey(process.env.OIDC_EXCHANGE_SUBJECT_KEY);
  } catch (e) {
    fail(`OIDC_EXCHANGE_SUBJECT_KEY: ${e.message}`);
  }
  const answer = (res, status, body) => {
    res.statusCode = status;
    res.setHeader('content-type', 'application/json');
    res.setHeader('cache-control', 'no-store');
    res.end(JSON.stringify(body));
  };
  exchangeHandler = (req, res) => {
    if (req.method !== 'POST') return answer(res, 405, { error: 'invalid_request' });
    let raw = '';
    req.setEncoding('utf8');
    req.on('data', (d) => { raw += d; });
    req.on('end', async () => {
      const p = new URLSearchParams(raw);
      const refuse = (error, description) => {
        log({ event: 'exchange_error', error, description });
        answer(res, 400, { error, error_description: description });
      };
      if (!(req.headers['content-type'] || '').startsWith('application/x-www-form-urlencoded')) {
        return refuse('invalid_request', 'form body expected');
      }
      if (p.get('grant_type') !== 'urn:ietf:params:oauth:grant-type:token-exchange') {
        return refuse('unsupported_grant_type', 'token exchange only');
      }
      if (!p.get('subject_token') || !p.get('subject_token_type')) {
        return refuse('invalid_request', 'subject_token and subject_token_type are required');
      }
      if (p.has('actor_token') !== p.has('actor_token_type')) {
        return refuse('invalid_request', 'actor_token and actor_token_type go together');
      }
      if (p.get('subject_token_type') !== 'urn:ietf:params:oauth:token-type:jwt') {
        return refuse('invalid_request', 'unsupported subject_token_type');
      }
      let subject;
      try {
        subject = (await jwtVerify(p.get('subject_token'), subjectKey)).payload;
      } catch (e) {
        return refuse('invalid_grant', `subject_token: ${e.code || e.message}`);
      }
      const accessToken = crypto.randomBytes(32).toString('base64url');
      stats.exchanges += 1;
      stats.last_exchange = {
        subject: subject.sub ?? null,
        subject_token_type: p.get('subject_token_type'),
        actor_token_type: p.get('actor_token_type'),
        actor_token_present: p.has('actor_token'),
        audience: p.get('audience'),
        resource: p.get('resource'),
        scope: p.get('scope'),
        requested_token_type: p.get('requested_token_type'),
        issued_sha256: crypto.createHash('sha256').update(accessToken).digest('hex'),
      };
      log({ event: 'exchange', subject: subject.sub });
      answer(res, 200, {
        access_token: accessToken,
        issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
        token_type: 'Bearer',
        expires_in: ttl,
      });
    });
  };
}

const ready = {
  port: actualPort,
  issuer,
  token_url: `${issuer}/token`,
  exchange_url: `${issuer}/exchange`,
  jwks_uri: `${issuer}/jwks`,
  discovery_url: `${issuer}/.well-known/openid-configuration`,
  resource: defaultResource,
  scopes: resourceScopes,
  token_ttl: ttl,
  pid: process.pid,
};
if (httpsServer) {
  Object.assign(ready, {
    https_port: actualHttpsPort,
    https_token_url: `https://${HOST}:${actualHttpsPort}/token`,
    ca_file: path.join(tlsDir, 'ca.pem'),
  });
}
process.stdout.write(`${JSON.stringify(ready)}\n`);

// Don't outlive the process that started us (a test binary killed before it could stop us):
// once we are re-parented, exit. OIDC_EXIT_WITH_PARENT=0 turns this off.
if (process.env.OIDC_EXIT_WITH_PARENT !== '0') {
  const parent = process.ppid;
  setInterval(() => { if (process.ppid !== parent) stop(); }, 500).unref();
}
