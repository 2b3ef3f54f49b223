// An oidc-provider storage adapter that keeps everything in memory until it expires.
// The built-in one is a least-recently-used cache of 1000 entries: under benchmark load it
// drops sessions, grants and refresh tokens, which then fail as if revoked.
const entries = new Map();      // "<Model>:<id>" -> { payload, expiresAt }
const byGrant = new Map();      // grantId -> Set of entry keys
const byUid = new Map();        // session uid -> entry key
const byUserCode = new Map();   // device user code -> entry key

function live(key) {
  const entry = key === undefined ? undefined : entries.get(key);
  if (!entry) return undefined;
  if (entry.expiresAt !== 0 && entry.expiresAt <= Date.now()) {
    entries.delete(key);
    return undefined;
  }
  return entry.payload;
}

export default class UnboundedAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    entries.set(key, { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : 0 });
    if (payload.grantId) {
      if (!byGrant.has(payload.grantId)) byGrant.set(payload.grantId, new Set());
      byGrant.get(payload.grantId).add(key);
    }
    if (payload.uid) byUid.set(payload.uid, key);
    if (payload.userCode) byUserCode.set(payload.userCode, key);
  }

  async find(id) {
    return live(this.key(id));
  }

  async findByUid(uid) {
    return live(byUid.get(uid));
  }

  async findByUserCode(userCode) {
    return live(byUserCode.get(userCode));
  }

  async consume(id) {
    const payload = live(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    entries.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of byGrant.get(grantId) || []) entries.delete(key);
    byGrant.delete(grantId);
  }
}
