package apikeys

import (
	"strings"
	"testing"
)

// FuzzWellFormed: only "<prefix><64 lowercase hex>" is well formed, and a
// fresh secret always is.
func FuzzWellFormed(f *testing.F) {
	f.Add("cr_", "cr_"+strings.Repeat("ab", 32))
	f.Add("cr_", "cr_"+strings.Repeat("AB", 32))
	f.Add("sk-", "Bearer sk-x")
	f.Add("", "\xff\x00")
	f.Fuzz(func(t *testing.T, prefix, key string) {
		if WellFormed(prefix, key) {
			rest, ok := strings.CutPrefix(key, prefix)
			if !ok || len(rest) != 64 || strings.Trim(rest, "0123456789abcdef") != "" {
				t.Fatalf("WellFormed(%q, %q) but it is not prefix + 64 hex", prefix, key)
			}
			if Digest(key) == Digest(key+"x") {
				t.Fatal("digest collision")
			}
		}
		if len(prefix) > 0 && len(prefix) < 16 && !strings.ContainsAny(prefix, "\x00") {
			k, d, err := NewSecret(prefix)
			if err == nil && (!WellFormed(prefix, k) || Digest(k) != d) {
				t.Fatalf("NewSecret(%q) = %q is not well formed or its digest is wrong", prefix, k)
			}
		}
	})
}

// FuzzParseLifetime: an accepted lifetime is positive (a huge number of
// days must not wrap around into a negative or zero duration).
func FuzzParseLifetime(f *testing.F) {
	for _, s := range []string{"30d", "12h", "1d", "0d", "-1d", "1.5d", " 7d ", "90m", "9223372036854775807d", "106752d", "1e3h", "d", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseLifetime(s)
		if err == nil && d <= 0 {
			t.Fatalf("ParseLifetime(%q) = %v, accepted but not positive", s, d)
		}
		if err != nil && d != 0 {
			t.Fatalf("ParseLifetime(%q) = %v with error %v", s, d, err)
		}
	})
}

// FuzzUSDToNanos: accepted amounts convert to non-negative nanos.
func FuzzUSDToNanos(f *testing.F) {
	for _, v := range []float64{0, 0.5, 1e9, 1e9 + 1, -0.0, 1e-12} {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, usd float64) {
		n, err := USDToNanos(usd)
		if err == nil && (n < 0 || n > 1e18) {
			t.Fatalf("USDToNanos(%v) = %d", usd, n)
		}
	})
}
