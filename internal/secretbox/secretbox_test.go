package secretbox

import (
	"errors"
	"strings"
	"testing"
)

func TestSealOpen(t *testing.T) {
	b, err := New("0123456789abcdef0123456789abcdef")
	if err != nil {
		t.Fatal(err)
	}
	s := b.Seal("vs-cookie", []byte("sb-token=secret"))
	if strings.Contains(s, "secret") {
		t.Fatalf("sealed value shows the plaintext: %s", s)
	}
	if s == b.Seal("vs-cookie", []byte("sb-token=secret")) {
		t.Fatal("two seals of one value are equal: the nonce is not random")
	}
	got, err := b.Open("vs-cookie", s)
	if err != nil || string(got) != "sb-token=secret" {
		t.Fatalf("Open = %q, %v", got, err)
	}
	if _, err := b.Open("other-purpose", s); !errors.Is(err, ErrOpen) {
		t.Fatalf("opened under another purpose: %v", err)
	}
	other, _ := New("another secret of enough length!!")
	if _, err := other.Open("vs-cookie", s); !errors.Is(err, ErrOpen) {
		t.Fatalf("opened with another key: %v", err)
	}
	tampered := s[:len(s)-2] + "AA"
	if _, err := b.Open("vs-cookie", tampered); !errors.Is(err, ErrOpen) {
		t.Fatalf("opened a tampered value: %v", err)
	}
}
