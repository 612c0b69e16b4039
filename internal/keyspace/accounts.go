package keyspace

// Upstream accounts and their scheduling state. The account records, the
// index of ids and the version counter carry the hash tag {accounts}, so one MULTI can create, update or
// delete an account together with the index and the version (on Redis
// Cluster they live on one shard). Sticky-session mappings and OAuth
// sessions are single keys with a TTL and need no tag.

// Account is the hash of one upstream account: its public record, its sealed
// credentials, its scheduling state and when it was last picked.
func (k Keyspace) Account(id string) string {
	return k.prefix + "accounts:{accounts}:acct:" + id
}

// AccountIndex is the set of every account id.
func (k Keyspace) AccountIndex() string {
	return k.prefix + "accounts:{accounts}:index"
}

// AccountVersion is bumped on every change a scheduler must see (a new,
// changed or deleted account, a state change), so replicas reload their
// in-process view only when something changed.
func (k Keyspace) AccountVersion() string {
	return k.prefix + "accounts:{accounts}:version"
}

// StickySession maps one conversation (a session hash) of a service to the
// account serving it, with a TTL that each request renews.
func (k Keyspace) StickySession(service, session string) string {
	return k.prefix + "accounts:sticky:" + service + ":" + session
}

// OAuthSession is a pending OAuth authorization (sealed PKCE verifier and
// state), kept until the pasted code is exchanged or it expires.
func (k Keyspace) OAuthSession(id string) string {
	return k.prefix + "accounts:oauth:" + id
}
