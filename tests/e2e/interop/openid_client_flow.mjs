// panva openid-client (an OpenID Certified relying party) driven by tests/e2e/test_interop.py.
//
// usage: node openid_client_flow.mjs '<json config>'
//   config: {issuer, client_id, client_secret, auth_method: "client_secret_basic" |
//            "client_secret_post", redirect_uri, scope}
// Talks JSON lines: it prints {"event": "authorize", "url": ...}, reads one line
// {"callback": "<redirect URL with the code>"} on stdin (the test's user agent signs in),
// then prints {"event": "result", ...} or {"event": "error", ...}. TLS to the proxy is
// verified against NODE_EXTRA_CA_CERTS (the group's CA); no insecure option is used.
import * as client from 'openid-client';
import { createInterface } from 'node:readline';

const config = JSON.parse(process.argv[2] || '{}');
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function readJson() {
  const { value, done } = await lines.next();
  if (done) throw new Error('stdin closed before the callback URL arrived');
  return JSON.parse(value);
}

function decodeSegment(segment) {
  return JSON.parse(Buffer.from(segment, 'base64url').toString('utf8'));
}

// What the library really put on the wire at the token and revocation endpoints.
const sent = [];
function recordingFetch(url, options) {
  const headers = new Headers(options.headers);
  const body = new URLSearchParams(typeof options.body === 'string' ? options.body : options.body?.toString() ?? '');
  const auth = headers.get('authorization') || '';
  let basic = null;
  if (auth.startsWith('Basic ')) {
    const pair = Buffer.from(auth.slice(6), 'base64').toString('utf8');
    const i = pair.indexOf(':');
    basic = { id: pair.slice(0, i), secret: pair.slice(i + 1) };
  }
  sent.push({
    url: String(url),
    method: options.method,
    basic,
    form_client_id: body.get('client_id'),
    form_has_secret: body.has('client_secret'),
  });
  return fetch(url, options);
}

async function main() {
  const auth = config.auth_method === 'client_secret_post'
    ? client.ClientSecretPost(config.client_secret)
    : client.ClientSecretBasic(config.client_secret);
  // 1. discovery: the document's issuer must equal this URL exactly (https only)
  const cfg = await client.discovery(new URL(config.issuer), config.client_id, {}, auth);
  cfg[client.customFetch] = recordingFetch;
  // The ID token's signature is checked against jwks_uri only with this (openid-client skips
  // it by default, as OIDC Core §3.1.3.7 allows over TLS).
  client.enableNonRepudiationChecks(cfg);
  const meta = cfg.serverMetadata();

  // 2. authorization request: PKCE S256, state, nonce
  const codeVerifier = client.randomPKCECodeVerifier();
  const state = client.randomState();
  const nonce = client.randomNonce();
  const url = client.buildAuthorizationUrl(cfg, {
    redirect_uri: config.redirect_uri,
    scope: config.scope,
    code_challenge: await client.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: 'S256',
    state,
    nonce,
  });
  out({ event: 'authorize', url: url.href });
  const { callback } = await readJson();

  // 3. callback + code exchange: state, iss (RFC 9207), PKCE, token response shape,
  //    ID token claims and (non-repudiation) signature
  const tokens = await client.authorizationCodeGrant(cfg, new URL(callback), {
    pkceCodeVerifier: codeVerifier,
    expectedState: state,
    expectedNonce: nonce,
    idTokenExpected: true,
  });
  const claims = tokens.claims();

  // 4. userinfo: the library checks that sub equals the ID token's
  const userinfo = await client.fetchUserInfo(cfg, tokens.access_token, claims.sub);

  // 5. refresh (rotated), with the refreshed ID token validated the same way
  const refreshed = await client.refreshTokenGrant(cfg, tokens.refresh_token);
  const refreshedClaims = refreshed.claims() ?? null;
  const userinfoAfterRefresh = await client.fetchUserInfo(cfg, refreshed.access_token, claims.sub);

  // 6. revocation (RFC 7009) of the new access token and refresh token, then the
  //    library's own view of them: introspection inactive, refresh refused
  await client.tokenRevocation(cfg, refreshed.access_token, { token_type_hint: 'access_token' });
  await client.tokenRevocation(cfg, refreshed.refresh_token, { token_type_hint: 'refresh_token' });
  const introspected = await client.tokenIntrospection(cfg, refreshed.access_token);
  let refreshAfterRevoke;
  try {
    await client.refreshTokenGrant(cfg, refreshed.refresh_token);
    refreshAfterRevoke = { ok: true };
  } catch (err) {
    refreshAfterRevoke = { ok: false, error: err.error ?? null, code: err.code ?? null, status: err.status ?? null };
  }

  out({
    event: 'result',
    issuer: meta.issuer,
    supports_pkce: meta.supportsPKCE(),
    id_token_header: decodeSegment(tokens.id_token.split('.')[0]),
    claims,
    token_response: {
      token_type: tokens.token_type,
      expires_in: tokens.expires_in,
      scope: tokens.scope ?? null,
      has_refresh_token: typeof tokens.refresh_token === 'string',
    },
    access_token: tokens.access_token,
    userinfo,
    refreshed: {
      rotated: refreshed.refresh_token !== tokens.refresh_token,
      claims: refreshedClaims,
      access_token: refreshed.access_token,
      refresh_token: refreshed.refresh_token,
      old_refresh_token: tokens.refresh_token,
    },
    userinfo_after_refresh: userinfoAfterRefresh,
    introspection_after_revoke: introspected,
    refresh_after_revoke: refreshAfterRevoke,
    sent,
  });
}

try {
  await main();
  process.exitCode = 0;
} catch (err) {
  out({
    event: 'error',
    name: err?.name ?? null,
    code: err?.code ?? null,
    error: err?.error ?? null,
    status: err?.status ?? null,
    message: String(err?.message ?? err),
    cause: err?.cause ? String(err.cause?.message ?? err.cause) : null,
    sent,
  });
  process.exitCode = 1;
} finally {
  lines.return?.();
}
