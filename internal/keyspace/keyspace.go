// Package keyspace names every Redis key the relay uses.
//
// All names start with a configurable prefix, so several relays (or tests)
// can share one Redis. Keys that one Lua script or MULTI touches share a hash
// tag ({...}), so the same code runs on Redis Cluster. Each domain has its own
// file here; no other package builds a key name by hand.
package keyspace

import "strings"

// Keyspace builds key names under one prefix.
type Keyspace struct {
	prefix string
}

// New returns a keyspace whose keys all start with prefix (e.g. "relay:").
func New(prefix string) Keyspace { return Keyspace{prefix: prefix} }

// Prefix is the string every key starts with.
func (k Keyspace) Prefix() string { return k.prefix }

func (k Keyspace) join(parts ...string) string {
	return k.prefix + strings.Join(parts, ":")
}

// Stream is a Redis stream that a worker pool consumes (images, usage,
// archive). Its name is its hash tag: a stream shares a slot with its
// dead-letter stream (the runtime moves entries between them in one MULTI),
// and the usage stream with the {usage} aggregates (the aggregator applies a
// batch and acknowledges it in one script).
func (k Keyspace) Stream(name string) string { return k.join("stream", "{"+name+"}") }

// DeadLetter is where entries of stream name go after too many deliveries.
func (k Keyspace) DeadLetter(name string) string { return k.join("stream", "{"+name+"}", "dead") }

// Lock is a short-lived lock that makes one replica do a thing (a login, a
// token refresh) while the others wait for its result.
func (k Keyspace) Lock(name string) string { return k.join("lock", name) }
