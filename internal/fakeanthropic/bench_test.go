package fakeanthropic

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func benchPost(t *testing.T, url, body string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+"/v1/messages", strings.NewReader(body))
	req.Header.Set("x-api-key", "k")
	req.Header.Set("anthropic-version", "2023-06-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestBenchAnswersLikeTheMessagesAPI(t *testing.T) {
	b := NewBench(BenchOptions{ReplyBytes: 50, Events: 3, EventBytes: 5})
	srv := httptest.NewServer(b)
	defer srv.Close()

	resp := benchPost(t, srv.URL, `{"model": "claude-x","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`)
	var msg struct {
		Model   string `json:"model"`
		Content []struct {
			Text string `json:"text"`
		} `json:"content"`
		Usage struct {
			Input  int64 `json:"input_tokens"`
			Output int64 `json:"output_tokens"`
		} `json:"usage"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&msg); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if msg.Model != "claude-x" || len(msg.Content) != 1 || len(msg.Content[0].Text) != 50 || msg.Usage.Input != 25 || msg.Usage.Output != 3 {
		t.Fatalf("%+v", msg)
	}

	resp = benchPost(t, srv.URL, `{"model":"claude-x","max_tokens":5,"stream": true,"messages":[{"role":"user","content":"hi"}]}`)
	defer resp.Body.Close()
	var types []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if typ, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var ev struct {
				Type string `json:"type"`
			}
			if err := json.Unmarshal([]byte(typ), &ev); err != nil {
				t.Fatalf("bad data %q: %v", typ, err)
			}
			types = append(types, ev.Type)
		}
	}
	want := "message_start,content_block_start,content_block_delta,content_block_delta,content_block_delta,content_block_stop,message_delta,message_stop"
	if strings.Join(types, ",") != want {
		t.Fatalf("events %v", types)
	}
	if c := b.Counts(); c.Requests != 2 || c.Streams != 1 || c.Open != 0 {
		t.Fatalf("counts %+v", c)
	}

	resp = benchPost(t, srv.URL, `{"max_tokens":5}`)
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("bad request answered %d", resp.StatusCode)
	}
}
