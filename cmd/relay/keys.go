package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/apikeys"
	"github.com/relaydev/relay/internal/config"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/redisconn"
)

const keysHelp = `relay keys: manage relay API keys in the configured Redis (REDIS_URL or REDIS_HOST).

  relay keys create --name NAME [options]   create a key; the key is printed once
  relay keys list [--search S] [--tag T] [--enabled true|false] [--offset N] [--limit N] [--json]
  relay keys revoke ID|NAME                 disable a key (it stops working within a second)
  relay keys revoke --delete ID|NAME        delete a key for good
  relay keys help

create options:
  --description TEXT      --tags a,b             --disabled
  --permissions LIST      services the key may use: openai,claude,gemini (default: all three)
  --allow-models LIST     only these models (a trailing * matches a prefix)
  --deny-models LIST      never these models
  --expires-at TIME       stop working at this RFC 3339 time
  --expires-after DUR     stop working DUR after the first request (e.g. 30d, 12h)
  --window DUR            window for --requests and --tokens (e.g. 1m, 5h)
  --requests N            requests per window       --tokens N        tokens per window
  --concurrency N         requests in progress at once
  --daily-usd X           daily cost limit (UTC day) --total-usd X     total cost limit
  --json                  print the result as JSON
`

// runCommand runs a command-line subcommand instead of the server.
func runCommand(ctx context.Context, cfg config.Config, log zerolog.Logger, args []string, stdout, stderr io.Writer) int {
	switch args[0] {
	case "keys":
		return runKeys(ctx, cfg, log, args[1:], stdout, stderr)
	case "healthcheck":
		return runHealthcheck(ctx, cfg, stdout, stderr)
	}
	fmt.Fprintf(stderr, "relay: unknown command %q (try: relay keys help, or relay healthcheck)\n", args[0])
	return 2
}

func runKeys(ctx context.Context, cfg config.Config, log zerolog.Logger, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, keysHelp)
		return 0
	}
	var run func(context.Context, *apikeys.Store, []string, io.Writer) error
	switch args[0] {
	case "create":
		run = keysCreate
	case "list":
		run = keysList
	case "revoke":
		run = keysRevoke
	default:
		fmt.Fprintf(stderr, "relay keys: unknown command %q\n\n%s", args[0], keysHelp)
		return 2
	}
	if cfg.Redis.Embedded() {
		fmt.Fprintln(stderr, "relay keys: set REDIS_URL or REDIS_HOST: keys live in the relay's Redis, "+
			"and the embedded one exists only inside a running relay")
		return 2
	}
	conn, err := redisconn.Open(ctx, cfg.Redis, zerolog.Nop())
	if err != nil {
		fmt.Fprintf(stderr, "relay keys: %v\n", err)
		return 1
	}
	defer conn.Close()
	store := apikeys.NewStore(conn.Client, keyspace.New(cfg.Redis.KeyPrefix), apikeys.Options{
		Prefix: cfg.APIKeyPrefix, Log: log})
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := run(ctx, store, args[1:], stdout); err != nil {
		var u usageError
		if errors.As(err, &u) {
			fmt.Fprintf(stderr, "relay keys %s: %v\n", args[0], err)
			return 2
		}
		fmt.Fprintf(stderr, "relay keys %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

// usageError is a mistake on the command line (exit status 2).
type usageError struct{ error }

func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("relay keys "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func keysCreate(ctx context.Context, st *apikeys.Store, args []string, out io.Writer) error {
	fs := newFlags("create")
	name := fs.String("name", "", "")
	desc := fs.String("description", "", "")
	tags := fs.String("tags", "", "")
	disabled := fs.Bool("disabled", false, "")
	perms := fs.String("permissions", "", "")
	allow := fs.String("allow-models", "", "")
	deny := fs.String("deny-models", "", "")
	expiresAt := fs.String("expires-at", "", "")
	expiresAfter := fs.String("expires-after", "", "")
	window := fs.String("window", "", "")
	requests := fs.Int64("requests", 0, "")
	tokens := fs.Int64("tokens", 0, "")
	conc := fs.Int64("concurrency", 0, "")
	daily := fs.Float64("daily-usd", 0, "")
	total := fs.Float64("total-usd", 0, "")
	asJSON := fs.Bool("json", false, "")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	k := apikeys.Key{
		Name: *name, Description: *desc, Tags: splitList(*tags), Enabled: !*disabled,
		AllowModels: splitList(*allow), DenyModels: splitList(*deny),
		Limits: apikeys.Limits{RequestsPerWindow: *requests, TokensPerWindow: *tokens, MaxConcurrent: *conc},
	}
	if *perms != "" {
		k.Permissions = splitList(*perms)
	}
	switch {
	case *expiresAt != "" && *expiresAfter != "":
		return usageError{errors.New("give --expires-at or --expires-after, not both")}
	case *expiresAt != "":
		t, err := time.Parse(time.RFC3339, *expiresAt)
		if err != nil {
			return usageError{fmt.Errorf("--expires-at: %q is not an RFC 3339 time such as 2030-01-02T15:04:05Z", *expiresAt)}
		}
		k.Expiry = apikeys.Expiry{Mode: apikeys.ExpiryFixed, At: t.UTC()}
	case *expiresAfter != "":
		d, err := apikeys.ParseLifetime(*expiresAfter)
		if err != nil {
			return usageError{fmt.Errorf("--expires-after: %v", err)}
		}
		k.Expiry = apikeys.Expiry{Mode: apikeys.ExpiryActivation, Secs: int64(d / time.Second)}
	}
	if *window != "" {
		d, err := apikeys.ParseLifetime(*window)
		if err != nil || d < time.Second {
			return usageError{fmt.Errorf("--window: %q is not a duration of a second or more", *window)}
		}
		k.Limits.WindowSec = int64(d / time.Second)
	}
	var err error
	if k.Limits.DailyCostNanos, err = apikeys.USDToNanos(*daily); err != nil {
		return usageError{fmt.Errorf("--daily-usd: %v", err)}
	}
	if k.Limits.TotalCostNanos, err = apikeys.USDToNanos(*total); err != nil {
		return usageError{fmt.Errorf("--total-usd: %v", err)}
	}
	raw, stored, err := st.Create(ctx, k)
	var inv *apikeys.InvalidError
	if errors.As(err, &inv) {
		return usageError{err}
	}
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(out).Encode(map[string]any{"key": raw, "id": stored.ID, "name": stored.Name})
	}
	fmt.Fprintf(out, "key:  %s\nid:   %s\nname: %s\nThe key is shown only this once: store it now.\n", raw, stored.ID, stored.Name)
	return nil
}

func keysList(ctx context.Context, st *apikeys.Store, args []string, out io.Writer) error {
	fs := newFlags("list")
	search := fs.String("search", "", "")
	tag := fs.String("tag", "", "")
	enabled := fs.String("enabled", "", "")
	offset := fs.Int("offset", 0, "")
	limit := fs.Int("limit", 100, "")
	asJSON := fs.Bool("json", false, "")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	q := apikeys.ListQuery{Search: *search, Tag: *tag, Offset: *offset, Limit: *limit}
	switch *enabled {
	case "":
	case "true", "false":
		b := *enabled == "true"
		q.Enabled = &b
	default:
		return usageError{fmt.Errorf("--enabled: %q is not true or false", *enabled)}
	}
	keys, total, err := st.List(ctx, q)
	if err != nil {
		return err
	}
	if *asJSON {
		shown := make([]apikeys.Key, len(keys))
		for i, k := range keys {
			shown[i] = *k
			shown[i].Digest = "" // the lookup digest is no business of a listing
		}
		return json.NewEncoder(out).Encode(map[string]any{"data": shown, "total": total})
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tENABLED\tKEY\tPERMISSIONS\tEXPIRES\tCREATED")
	for _, k := range keys {
		exp := "-"
		if at, ok := k.ExpiresAt(); ok {
			exp = at.UTC().Format(time.RFC3339)
		} else if k.Expiry.Mode == apikeys.ExpiryActivation {
			exp = fmt.Sprintf("%s after first use", time.Duration(k.Expiry.Secs)*time.Second)
		}
		fmt.Fprintf(tw, "%s\t%s\t%t\t%s\t%s\t%s\t%s\n", k.ID, k.Name, k.Enabled, k.Hint,
			strings.Join(k.Permissions, ","), exp, k.CreatedAt.UTC().Format(time.RFC3339))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(out, "%d of %d keys\n", len(keys), total)
	return nil
}

func keysRevoke(ctx context.Context, st *apikeys.Store, args []string, out io.Writer) error {
	fs := newFlags("revoke")
	del := fs.Bool("delete", false, "")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() != 1 {
		return usageError{errors.New("name one key: its id or its exact name")}
	}
	id, err := resolveKey(ctx, st, fs.Arg(0))
	if err != nil {
		return err
	}
	if *del {
		if err := st.Delete(ctx, id); err != nil {
			return err
		}
		fmt.Fprintf(out, "deleted %s\n", id)
		return nil
	}
	if _, err := st.Update(ctx, id, func(k *apikeys.Key) error { k.Enabled = false; return nil }); err != nil {
		return err
	}
	fmt.Fprintf(out, "disabled %s\n", id)
	return nil
}

// resolveKey finds a key by id, or else by its exact name (which must be
// unique).
func resolveKey(ctx context.Context, st *apikeys.Store, ref string) (string, error) {
	if k, err := st.Get(ctx, ref); err == nil {
		return k.ID, nil
	} else if !errors.Is(err, apikeys.ErrNotFound) {
		return "", err
	}
	keys, _, err := st.List(ctx, apikeys.ListQuery{Search: ref, Limit: 500})
	if err != nil {
		return "", err
	}
	var ids []string
	for _, k := range keys {
		if k.Name == ref {
			ids = append(ids, k.ID)
		}
	}
	switch len(ids) {
	case 0:
		return "", fmt.Errorf("no key has the id or name %q", ref)
	case 1:
		return ids[0], nil
	}
	return "", fmt.Errorf("%d keys are named %q; give the id", len(ids), ref)
}
