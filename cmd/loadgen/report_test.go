package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/relaydev/relay/internal/loadtest"
)

func TestTableAlignsColumns(t *testing.T) {
	var buf bytes.Buffer
	table(&buf, []string{"name", "p50"}, [][]string{{"direct", "0.50"}, {"relay-long", "12.25"}})
	want := "name          p50\n" +
		"----------  -----\n" +
		"direct       0.50\n" +
		"relay-long  12.25\n"
	if buf.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", buf.String(), want)
	}
}

func TestAddedIsRelayMinusDirectPerQuantile(t *testing.T) {
	d := loadtest.Summary{P50: time.Millisecond, P90: 2 * time.Millisecond, P99: 5 * time.Millisecond, Max: 9 * time.Millisecond}
	r := loadtest.Summary{P50: 1300 * time.Microsecond, P90: 2 * time.Millisecond, P99: 4 * time.Millisecond, Max: 20 * time.Millisecond}
	a := added(d, r)
	if a.P50 != 300*time.Microsecond || a.P90 != 0 || a.P99 != -time.Millisecond || a.Max != 11*time.Millisecond {
		t.Fatalf("%+v", a)
	}
	if ms(a.P50) != "0.30" || ms(a.Max) != "11.0" || ms(150*time.Millisecond) != "150" {
		t.Fatalf("%s %s", ms(a.P50), ms(a.Max))
	}
}

func TestCommandStats(t *testing.T) {
	before, total0 := parseCommandStats("# Commandstats\r\ncmdstat_get:calls=10,usec=5,usec_per_call=0.5\r\ncmdstat_xadd:calls=4,usec=8\r\n")
	after, total1 := parseCommandStats("cmdstat_get:calls=30,usec=5\r\ncmdstat_xadd:calls=14,usec=8\r\ncmdstat_evalsha:calls=10,usec=1\r\nbad line\r\n")
	if total0 != 14 || total1 != 54 {
		t.Fatalf("totals %d %d", total0, total1)
	}
	top := topCommands(before, after, 10, 2)
	if len(top) != 2 || top["get"] != 2 || top["evalsha"] != 1 {
		t.Fatalf("%v", top)
	}
	if got := topLine(map[string]float64{"xadd": 1, "get": 2}); got != "get 2.0, xadd 1.0" {
		t.Fatal(got)
	}
}

func TestTargetsPassAndFail(t *testing.T) {
	rep := &Report{
		NonStreaming: []RatePoint{{Rate: 1000, Added: Added{P50: 200 * time.Microsecond, P99: 2 * time.Millisecond},
			Relay: Run{RedisCmdsPerReq: 8}}},
		Sustained: &SustainedResult{Best: 5000},
	}
	got := map[string]TargetCheck{}
	for _, c := range rep.checkTargets() {
		got[c.Measure] = c
	}
	if c := got["added latency, non-streaming, 1,000 req/s"]; c.Pass || c.Missing { // p99 2 ms > 1.5 ms
		t.Errorf("%+v", c)
	}
	if c := got["sustained throughput, full path, no-delay fake"]; !c.Pass {
		t.Errorf("%+v", c)
	}
	if c := got["Redis commands per request"]; !c.Pass {
		t.Errorf("%+v", c)
	}
	if c := got["open streams"]; !c.Missing {
		t.Errorf("%+v", c)
	}
	var buf bytes.Buffer
	rep.Targets = rep.checkTargets()
	rep.print(&buf)
	if !strings.Contains(buf.String(), "FAIL") || !strings.Contains(buf.String(), "n/a") {
		t.Fatalf("%s", buf.String())
	}
}

func TestOptions(t *testing.T) {
	var errs bytes.Buffer
	o, err := parseOptions([]string{"-rates", "100, 2000", "-streams", "10", "-skip", "images,profile", "-quick"}, &errs)
	if err != nil || len(o.rates) != 2 || o.rates[1] != 2000 || o.streams[0] != 10 || !o.skip["images"] || o.duration != 2*time.Second {
		t.Fatalf("%+v %v", o, err)
	}
	for _, bad := range [][]string{{"-rates", "x"}, {"-skip", "nothing"}, {"-streams", "-1"}} {
		if _, err := parseOptions(bad, &errs); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

func TestChatBodyIsUnique(t *testing.T) {
	a, b := string(chatBody(1, false)), string(chatBody(2, true))
	if a == b || strings.Contains(a, `"stream"`) || !strings.Contains(b, `"stream":true`) {
		t.Fatalf("%s\n%s", a, b)
	}
}
