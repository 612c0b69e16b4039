// Package faults holds the relay's fault suite: tests, behind the build tag
// "faults", that run real processes (a persistent redis-server, two relay
// replicas built from cmd/relay, fake upstreams) under a bounded load of
// mixed traffic while replicas are killed and restarted, Redis restarts, a
// rolling restart runs and the upstreams fail; then they check that no usage
// was lost or double-counted, no lease leaked, and the logs hold no panic and
// no secret, and print the result as a table.
//
//	go test -tags faults -race -count=1 ./internal/faults/
package faults
