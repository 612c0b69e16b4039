package keyspace

import "strconv"

// Usage aggregates and the per-key counters that key limits read. They all
// carry the hash tag {usage}, so one script can update a batch of them
// atomically (on Redis Cluster they live on one shard).
//
// dim is one of the usage dimensions (usage.DimKey, DimModel, DimAccount,
// DimKeyModel, DimGlobal); gran is usage.Hour, Day or Month; bucket is the
// UTC time bucket in that granularity's format.

// UsageBucket is the aggregate hash of one dimension value in one time bucket.
func (k Keyspace) UsageBucket(dim, id, gran, bucket string) string {
	return k.prefix + "usage:{usage}:" + dim + ":" + gran + ":" + bucket + ":" + id
}

// UsageTotal is the all-time aggregate hash of one dimension value.
func (k Keyspace) UsageTotal(dim, id string) string {
	return k.prefix + "usage:{usage}:" + dim + ":total:" + id
}

// UsageIndex is the sorted set of the dimension values seen in one bucket
// (member: id, score: requests), which the read side pages through instead of
// scanning keys.
func (k Keyspace) UsageIndex(dim, gran, bucket string) string {
	return k.prefix + "usage:{usage}:index:" + dim + ":" + gran + ":" + bucket
}

// UsageTokenWindow counts a key's tokens in one fixed window of windowSec
// seconds starting at windowStart (unix seconds); the token limit reads it.
func (k Keyspace) UsageTokenWindow(keyID string, windowSec, windowStart int64) string {
	return k.prefix + "usage:{usage}:tokwin:" + strconv.FormatInt(windowSec, 10) + ":" +
		strconv.FormatInt(windowStart, 10) + ":" + keyID
}

// UsageSeen marks an event as applied, so a redelivered event is not counted
// twice.
func (k Keyspace) UsageSeen(eventID string) string {
	return k.prefix + "usage:{usage}:seen:" + eventID
}

// UsageTotalIndex is the sorted set of every value of one dimension ever seen
// (member: id, score: requests); it never expires.
func (k Keyspace) UsageTotalIndex(dim string) string {
	return k.prefix + "usage:{usage}:index:" + dim + ":total"
}

// UsageKeyModels is the sorted set of the models one key has used (member:
// model, score: requests), for the key's per-model breakdown.
func (k Keyspace) UsageKeyModels(keyID string) string {
	return k.prefix + "usage:{usage}:keymodels:" + keyID
}

// UsageUnknownModels is the sorted set of models that had no price when
// their usage was counted (member: model, score: requests).
func (k Keyspace) UsageUnknownModels() string {
	return k.prefix + "usage:{usage}:unknown-models"
}
