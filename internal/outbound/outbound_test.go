package outbound

import (
	"net/http"
	"testing"
	"time"
)

func TestTransportPerProxy(t *testing.T) {
	p := NewPool(3 * time.Second)
	direct, err := p.Transport("")
	if err != nil || direct.Proxy != nil || direct.ResponseHeaderTimeout != 3*time.Second {
		t.Fatalf("direct transport %+v, %v", direct, err)
	}
	again, _ := p.Transport("")
	if again != direct {
		t.Fatal("a second call made a second transport: connections would not be reused")
	}
	socks, err := p.Transport("socks5://127.0.0.1:1080")
	if err != nil || socks == direct || socks.Proxy == nil {
		t.Fatalf("proxied transport %+v, %v", socks, err)
	}
	req, _ := http.NewRequest("GET", "https://api.example/v1", nil)
	if u, _ := socks.Proxy(req); u == nil || u.Host != "127.0.0.1:1080" {
		t.Fatalf("proxy for a request: %v", u)
	}
	if _, err := p.Transport("http://[::1"); err == nil {
		t.Fatal("a malformed proxy URL was accepted")
	}
	p.Close()
}
