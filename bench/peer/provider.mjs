// The performance peer of bench/run.py: panva's oidc-provider (OpenID Certified), one Node
// process on 127.0.0.1, configured for a like-for-like comparison:
// one confidential client (client_secret_basic), RS256 with an RSA-2048 key, PKCE S256
// required, the built-in development login and consent pages, refresh tokens for clients
// allowed the grant (not rotated), and an in-memory adapter that never evicts.
//
//   node bench/peer/provider.mjs PORT CONFIG.json
//
// CONFIG.json: {"client_id", "client_secret", "redirect_uri", "jwt_access_tokens"}. With
// "jwt_access_tokens": true the access tokens are RS256 JWTs (RFC 9068, through the
// resource indicators feature with one default resource) instead of opaque handles, so
// that a code or refresh grant signs two tokens, as ours does. Prints "ready <pid>" when
// listening.
import crypto from 'node:crypto';
import fs from 'node:fs';
import { Provider } from 'oidc-provider';
import UnboundedAdapter from './adapter.mjs';

const port = Number(process.argv[2]);
const config = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'));
const issuer = `http://127.0.0.1:${port}`;

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'bench-rs256', alg: 'RS256', use: 'sig' };

const person = {
  sub: 'bench-user', name: 'Bench User', email: 'bench-user@example.test', email_verified: true,
};

const provider = new Provider(issuer, {
  adapter: UnboundedAdapter,
  clients: [{
    client_id: config.client_id,
    client_secret: config.client_secret,
    redirect_uris: [config.redirect_uri],
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    id_token_signed_response_alg: 'RS256',
  }],
  jwks: { keys: [signingKey] },
  cookies: { keys: [crypto.randomBytes(24).toString('base64url')] },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  features: {
    devInteractions: { enabled: true },
    ...(config.jwt_access_tokens ? {
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:konnect-bench:api',
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: 'api', audience: 'urn:konnect-bench:api',
          accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } },
        }),
      },
    } : {}),
  },
  pkce: { required: () => true },
  ttl: { AuthorizationCode: 900 },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: () => false,
  // any login name of the development login page is the one bench user
  findAccount: async () => ({ accountId: person.sub, claims: async () => ({ ...person }) }),
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`ready ${process.pid}`);
});
