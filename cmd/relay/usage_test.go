package main

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/redis/go-redis/v9"

	"github.com/relaydev/relay/internal/fakevs"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/testredis"
	"github.com/relaydev/relay/usage"
)

// usageStack is a relay process with a real Redis of its own and the fake
// Vertical Studio upstream, plus an admin session and one API key.
type usageStack struct {
	redis *testredis.Server
	rdb   *redis.Client
	fake  *fakevs.Fake
	env   []string
	relay *process
	admin string
	key   string
	keyID string
}

func newUsageStack(t *testing.T) *usageStack {
	t.Helper()
	st := &usageStack{redis: testredis.StartServer(t, true)}
	st.rdb = testredis.NewClient(st.redis.Addr)
	t.Cleanup(func() { st.rdb.Close() })
	st.fake = fakevs.New(fakevs.Options{Email: "team@example.com", Password: "vs-password"})
	up := httptest.NewServer(st.fake)
	t.Cleanup(up.Close)
	st.env = []string{
		"REDIS_URL=" + st.redis.URL, "ADMIN_PASSWORD=admin-password",
		"JWT_SECRET=" + strings.Repeat("j", 32), "ENCRYPTION_KEY=" + strings.Repeat("e", 32),
		"VS_EMAIL=team@example.com", "VS_PASSWORD=vs-password", "VS_BASE_URL=" + up.URL,
		"WORKER_VISIBILITY_TIMEOUT=2s", "LOG_LEVEL=info",
	}
	st.relay = startRelay(t, st.env...)
	var sess struct{ Token string }
	if code := doJSON(t, "POST", st.relay.URL+"/admin/login", "", map[string]string{"username": "admin", "password": "admin-password"}, &sess); code != 200 {
		t.Fatalf("admin login = %d", code)
	}
	st.admin = sess.Token
	var created struct {
		Key  string
		Data struct{ ID string }
	}
	if code := doJSON(t, "POST", st.relay.URL+"/admin/keys", st.admin, map[string]any{"name": "usage-test"}, &created); code != 201 {
		t.Fatalf("create key = %d", code)
	}
	st.key, st.keyID = created.Key, created.Data.ID
	return st
}

func (st *usageStack) client() openai.Client {
	return openai.NewClient(option.WithBaseURL(st.relay.URL+"/v1"), option.WithAPIKey(st.key), option.WithMaxRetries(0))
}

// hash reads one aggregate hash as numbers.
func (st *usageStack) hash(t *testing.T, key string) map[string]int64 {
	t.Helper()
	raw, err := st.rdb.HGetAll(context.Background(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for f, v := range raw {
		var n int64
		fmt.Sscan(v, &n)
		out[f] = n
	}
	return out
}

// settled waits until the usage stream has nothing unread or unacknowledged.
func (st *usageStack) settled(t *testing.T, ks keyspace.Keyspace) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	stream := ks.Stream(usage.StreamName)
	for {
		// Settled: the group has read up to the last entry, and holds none
		// unacknowledged.
		groups, err := st.rdb.XInfoGroups(ctx, stream).Result()
		last, lerr := st.rdb.XRevRangeN(ctx, stream, "+", "-", 1).Result()
		done := err == nil && lerr == nil && len(groups) == 1 && groups[0].Pending == 0 &&
			(len(last) == 0 || groups[0].LastDeliveredID == last[0].ID)
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("usage stream did not settle: %+v %v", groups, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// N known requests through the relay: every aggregate, in every dimension and
// every bucket, equals what the fake upstream reported.
func TestUsageAggregatesMatchUpstream(t *testing.T) {
	st := newUsageStack(t)
	ks := keyspace.New("relay:")
	client := st.client()
	ctx := context.Background()

	type want struct{ requests, in, out int64 }
	perModel := map[string]*want{}
	add := func(model string, u openai.CompletionUsage) {
		w := perModel[model]
		if w == nil {
			w = &want{}
			perModel[model] = w
		}
		w.requests++
		w.in += u.PromptTokens
		w.out += u.CompletionTokens
	}
	const each = 6
	for i := 0; i < each; i++ {
		resp, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model:    "gpt-4o",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(fmt.Sprintf("question %d", i))},
		})
		if err != nil {
			t.Fatal(err)
		}
		add("gpt-4o", resp.Usage)

		stream := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Model:         "claude-4-sonnet-thinking",
			Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage("think")},
			StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
		})
		var u openai.CompletionUsage
		for stream.Next() {
			if c := stream.Current(); c.Usage.TotalTokens > 0 {
				u = c.Usage
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		add("claude-4-sonnet-thinking", u)
	}
	var total want
	for _, w := range perModel {
		if w.in == 0 || w.out == 0 {
			t.Fatalf("the client saw no usage: %+v", perModel)
		}
		total.requests += w.requests
		total.in += w.in
		total.out += w.out
	}
	st.settled(t, ks)

	now := time.Now().UTC()
	buckets := []struct{ gran, bucket string }{
		{usage.Hour, now.Format(usage.HourFormat)}, {usage.Day, now.Format(usage.DayFormat)}, {usage.Month, now.Format(usage.MonthFormat)},
	}
	check := func(name, key string, w want) {
		t.Helper()
		h := st.hash(t, key)
		if h[usage.FieldRequests] != w.requests || h[usage.FieldInputTokens] != w.in || h[usage.FieldOutputTokens] != w.out {
			t.Errorf("%s: requests %d in %d out %d; upstream reported requests %d in %d out %d",
				name, h[usage.FieldRequests], h[usage.FieldInputTokens], h[usage.FieldOutputTokens], w.requests, w.in, w.out)
		}
		if h[usage.FieldCostNanos] <= 0 {
			t.Errorf("%s: no cost counted (%d)", name, h[usage.FieldCostNanos])
		}
	}
	for _, b := range buckets {
		check("global/"+b.gran, ks.UsageBucket(usage.DimGlobal, usage.GlobalID, b.gran, b.bucket), total)
		check("key/"+b.gran, ks.UsageBucket(usage.DimKey, st.keyID, b.gran, b.bucket), total)
		check("account/"+b.gran, ks.UsageBucket(usage.DimAccount, "vertical-studio", b.gran, b.bucket), total)
		for model, w := range perModel {
			check("model "+model+"/"+b.gran, ks.UsageBucket(usage.DimModel, model, b.gran, b.bucket), *w)
			check("keymodel "+model+"/"+b.gran, ks.UsageBucket(usage.DimKeyModel, usage.KeyModelID(st.keyID, model), b.gran, b.bucket), *w)
		}
	}
	check("global/total", ks.UsageTotal(usage.DimGlobal, usage.GlobalID), total)
	check("key/total", ks.UsageTotal(usage.DimKey, st.keyID), total)

	// Every chat was queued for archiving when its request ended: none is
	// left for the orphan sweeper.
	if n, err := st.rdb.ZCard(context.Background(), ks.OpenChats()).Result(); err != nil || n != 0 {
		t.Errorf("%d chats left open after their requests ended (%v)", n, err)
	}

	// The admin read API and the key's own view read the same numbers.
	var summary struct {
		Totals usage.Totals `json:"totals"`
	}
	if code := doJSON(t, "GET", st.relay.URL+"/admin/usage/summary?dim=key&id="+st.keyID, st.admin, nil, &summary); code != 200 {
		t.Fatalf("usage summary = %d", code)
	}
	if summary.Totals.Requests != total.requests || summary.Totals.InputTokens != total.in || summary.Totals.OutputTokens != total.out {
		t.Errorf("admin summary %+v, want %+v", summary.Totals, total)
	}
}

// SIGKILL in the middle of a load, then a restart: every request the client
// got a complete answer for is counted, exactly once.
func TestUsageSurvivesSIGKILL(t *testing.T) {
	st := newUsageStack(t)
	ks := keyspace.New("relay:")
	client := st.client()

	var answered sync.Map // request id -> true, for complete answers
	var sent, ok atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				id := fmt.Sprintf("load-%d-%d", w, i)
				sent.Add(1)
				_, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
					Model:    "gpt-4o",
					Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(id)},
				}, option.WithHeader("X-Request-Id", id))
				if err == nil {
					answered.Store(id, true)
					ok.Add(1)
				}
			}
		}(w)
	}
	time.Sleep(1500 * time.Millisecond)
	if err := st.relay.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-st.relay.done
	cancel()
	wg.Wait()
	if ok.Load() == 0 {
		t.Fatal("no request was answered before the kill")
	}

	// Restart: the new process takes over what the killed one had read but
	// not acknowledged, once it has been idle past the visibility timeout.
	st.relay = startRelay(t, st.env...)
	st.settled(t, ks)

	// Every answered request has its event on the usage stream...
	entries, err := st.rdb.XRange(context.Background(), ks.Stream(usage.StreamName), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	events := map[string]string{} // request id -> event id
	for _, e := range entries {
		ev, err := usage.DecodeEvent([]byte(e.Values[usage.StreamField].(string)))
		if err != nil {
			t.Fatal(err)
		}
		events[ev.RequestID] = ev.ID
	}
	missing := 0
	answered.Range(func(id, _ any) bool {
		if _, found := events[id.(string)]; !found {
			missing++
		}
		return true
	})
	if missing > 0 {
		t.Errorf("%d of %d answered requests have no usage event", missing, ok.Load())
	}
	// ...and the aggregates count each event once: no more than the distinct
	// events, no fewer than the answered requests.
	distinct := map[string]bool{}
	for _, id := range events {
		distinct[id] = true
	}
	h := st.hash(t, ks.UsageTotal(usage.DimKey, st.keyID))
	if h[usage.FieldRequests] != int64(len(distinct)) || h[usage.FieldRequests] < ok.Load() {
		t.Errorf("aggregated %d requests; %d distinct events, %d answered, %d sent",
			h[usage.FieldRequests], len(distinct), ok.Load(), sent.Load())
	}
	if h[usage.FieldInputTokens] != 11*h[usage.FieldRequests] || h[usage.FieldOutputTokens] != 7*h[usage.FieldRequests] {
		t.Errorf("tokens in %d out %d for %d requests of 11/7", h[usage.FieldInputTokens], h[usage.FieldOutputTokens], h[usage.FieldRequests])
	}
	t.Logf("sent %d, answered %d, events %d, aggregated %d", sent.Load(), ok.Load(), len(distinct), h[usage.FieldRequests])
}
