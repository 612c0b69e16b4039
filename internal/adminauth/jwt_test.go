package adminauth

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestJWT(t *testing.T) {
	secret := []byte(strings.Repeat("s", 32))
	now := time.Unix(1_800_000_000, 0)
	c := Claims{Issuer: issuer, Subject: "admin", ID: "j1", IssuedAt: now.Unix(), Expires: now.Add(time.Hour).Unix()}
	tok, err := sign(secret, c)
	if err != nil {
		t.Fatal(err)
	}
	got, err := verify(secret, tok, now)
	if err != nil || got != c {
		t.Fatalf("verify = %+v, %v", got, err)
	}
	if _, err := verify([]byte(strings.Repeat("x", 32)), tok, now); !errors.Is(err, errBadToken) {
		t.Fatalf("other secret: %v", err)
	}
	if _, err := verify(secret, tok, now.Add(time.Hour)); !errors.Is(err, ErrExpiredToken) {
		t.Fatalf("at expiry: %v", err)
	}
	if _, err := verify(secret, tok, now.Add(-2*time.Minute)); !errors.Is(err, ErrExpiredToken) {
		t.Fatalf("issued in the future: %v", err)
	}
	for _, bad := range []Claims{
		{Issuer: "someone", Subject: "admin", ID: "j", Expires: c.Expires},
		{Issuer: issuer, Subject: "", ID: "j", Expires: c.Expires},
		{Issuer: issuer, Subject: "admin", ID: "", Expires: c.Expires},
		{Issuer: issuer, Subject: "admin", ID: "j"},
	} {
		tok, _ := sign(secret, bad)
		if _, err := verify(secret, tok, now); !errors.Is(err, errBadToken) {
			t.Errorf("claims %+v accepted: %v", bad, err)
		}
	}
	parts := strings.Split(tok, ".")
	for _, bad := range []string{"", tok + "x", parts[0] + "." + parts[1], "eyJhbGciOiJub25lIn0." + parts[1] + "." + parts[2],
		parts[0] + "." + parts[1] + "." + parts[2] + ".x", strings.Repeat("a", 5000)} {
		if _, err := verify(secret, bad, now); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
