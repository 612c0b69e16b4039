package keyspace

import "strconv"

// Relay API keys and admin credentials.
//
// A key's record lives under the SHA-256 digest of the key, so authenticating
// a request is one read. The per-key limit counters (concurrency leases and
// the request window) carry the hash tag {k:<id>}, so the one admission
// script that touches both runs on one Redis Cluster shard.

// APIKeyRecord is the hash holding a key's record: field "rec" (JSON) and,
// for keys whose expiry starts at first use, "activated_at" (unix ms, set
// once with HSETNX). digest is the lowercase hex SHA-256 of the key.
func (k Keyspace) APIKeyRecord(digest string) string { return k.join("apikey", "d", digest) }

// APIKeyDigest maps a key id to the digest its record is stored under.
func (k Keyspace) APIKeyDigest(id string) string { return k.join("apikey", "id", id) }

// APIKeyIndex is the sorted set of key ids scored by creation time (unix ms),
// which the admin list pages through.
func (k Keyspace) APIKeyIndex() string { return k.join("apikey", "index") }

// APIKeyLeases is a key's concurrency leases: a sorted set whose members are
// lease ids scored by their expiry (unix ms). A lease that is not renewed
// expires, so a crashed process cannot leak one.
func (k Keyspace) APIKeyLeases(id string) string {
	return k.prefix + "apikey:{k:" + id + "}:leases"
}

// APIKeyRequestWindow counts a key's admitted requests in the fixed window of
// windowSec seconds that starts at windowStart (unix seconds, a multiple of
// windowSec).
func (k Keyspace) APIKeyRequestWindow(id string, windowSec, windowStart int64) string {
	return k.prefix + "apikey:{k:" + id + "}:reqwin:" + strconv.FormatInt(windowSec, 10) + ":" +
		strconv.FormatInt(windowStart, 10)
}

// AdminCredentials is the admin's record (JSON: username, bcrypt hash,
// when the password last changed). Created with SET NX on first boot only.
func (k Keyspace) AdminCredentials() string { return k.join("admin", "credentials") }

// AdminSession is one admin login (value: username), keyed by the token's
// jti; it expires with the token. Logout and password changes delete it.
func (k Keyspace) AdminSession(jti string) string { return k.join("admin", "session", jti) }

// AdminSessions is the sorted set of live session jtis scored by expiry, so a
// password change can revoke every session.
func (k Keyspace) AdminSessions() string { return k.join("admin", "sessions") }

// AdminLoginFailures counts failed logins in the throttle window; scope is
// "ip" or "user", id the client address or a digest of the username.
func (k Keyspace) AdminLoginFailures(scope, id string) string {
	return k.prefix + "admin:{login}:fail:" + scope + ":" + id
}
