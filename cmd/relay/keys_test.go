package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/relaydev/relay/internal/apikeys"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/testredis"
)

func TestKeysCLI(t *testing.T) {
	env := testredis.New(t)
	vars := map[string]string{
		"REDIS_URL": env.URL, "REDIS_KEY_PREFIX": env.Prefix,
		"JWT_SECRET": strings.Repeat("j", 32), "ENCRYPTION_KEY": strings.Repeat("e", 32), "LOG_LEVEL": "error",
	}
	relay := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := run(args, func(k string) string { return vars[k] }, &out, &errOut)
		return code, out.String(), errOut.String()
	}
	store := apikeys.NewStore(env.Client, keyspace.New(env.Prefix), apikeys.Options{})
	ctx := context.Background()

	code, out, _ := relay("keys", "help")
	if code != 0 || !strings.Contains(out, "relay keys create") {
		t.Fatalf("help: %d %s", code, out)
	}
	if code, _, errOut := relay("keys", "create", "--name", "x", "--permissions", "azure"); code != 2 || !strings.Contains(errOut, "azure") {
		t.Fatalf("bad permission: %d %s", code, errOut)
	}

	code, out, errOut := relay("keys", "create", "--name", "ci", "--tags", "ci,nightly", "--permissions", "claude,gemini",
		"--window", "1h", "--requests", "100", "--concurrency", "2", "--daily-usd", "2.5", "--expires-after", "30d", "--json")
	if code != 0 {
		t.Fatalf("create: %d %s", code, errOut)
	}
	var created struct{ Key, ID, Name string }
	if err := json.Unmarshal([]byte(out), &created); err != nil || !apikeys.WellFormed("cr_", created.Key) {
		t.Fatalf("create output %q: %v", out, err)
	}
	k, err := store.Authenticate(ctx, created.Key)
	if err != nil || k.ID != created.ID || k.Limits.DailyCostNanos != 2_500_000_000 || k.Limits.WindowSec != 3600 ||
		k.Expiry.Secs != 30*86400 || strings.Join(k.Permissions, ",") != "claude,gemini" {
		t.Fatalf("created key %+v, %v", k, err)
	}

	code, out, _ = relay("keys", "create", "--name", "other")
	if code != 0 || !strings.Contains(out, "key:  cr_") || !strings.Contains(out, "shown only this once") {
		t.Fatalf("plain create: %d %s", code, out)
	}

	code, out, _ = relay("keys", "list")
	if code != 0 || !strings.Contains(out, created.ID) || !strings.Contains(out, "other") || !strings.Contains(out, "2 of 2 keys") {
		t.Fatalf("list: %d %s", code, out)
	}
	if strings.Contains(out, created.Key) || strings.Contains(out, k.Digest) {
		t.Fatalf("list shows the key or its digest: %s", out)
	}
	code, out, _ = relay("keys", "list", "--tag", "nightly", "--json")
	if code != 0 || !strings.Contains(out, `"total":1`) || strings.Contains(out, k.Digest) {
		t.Fatalf("list by tag: %d %s", code, out)
	}

	if code, out, errOut := relay("keys", "revoke", "ci"); code != 0 || !strings.Contains(out, "disabled "+created.ID) {
		t.Fatalf("revoke by name: %d %s %s", code, out, errOut)
	}
	store = apikeys.NewStore(env.Client, keyspace.New(env.Prefix), apikeys.Options{}) // no cached copy
	if _, err := store.Authenticate(ctx, created.Key); !errors.Is(err, apikeys.ErrDisabled) {
		t.Fatalf("after revoke: %v", err)
	}
	if code, _, _ := relay("keys", "revoke", "--delete", created.ID); code != 0 {
		t.Fatal("delete failed")
	}
	if _, err := store.Get(ctx, created.ID); !errors.Is(err, apikeys.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if code, _, errOut := relay("keys", "revoke", "nobody"); code != 1 || !strings.Contains(errOut, "nobody") {
		t.Fatalf("unknown key: %d %s", code, errOut)
	}

	// Without a configured Redis the CLI says what to set.
	delete(vars, "REDIS_URL")
	if code, _, errOut := relay("keys", "list"); code != 2 || !strings.Contains(errOut, "REDIS_URL") {
		t.Fatalf("embedded: %d %s", code, errOut)
	}
}
