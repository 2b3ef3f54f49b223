"""External authorities: sign-in delegated to an upstream OpenID Provider or SAML2 identity
provider, configured by the `authorities:` list of the client registry file, with Konnect's
keys and defaults (Konnect's identity/authorities/).

- `registry.py`: the entries, their validation and defaults (no network, no third-party
  library), read by `shared.clients.ClientRegistry` from the same YAML document.
- `oidc.py`: the upstream OpenID Provider (discovery, JWKS, code flow with PKCE or
  Konnect's `id_token` response type, ID token checks).
- `saml2.py`: the upstream SAML2 IdP; the only importer of pysaml2.
- `fetch.py`: every request to an upstream, with a deadline and a size cap.
"""
