package config

import (
	"strings"
	"testing"
	"time"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestDefaultsWithEmbeddedRedis(t *testing.T) {
	c, err := Load(envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.Port != 7860 || c.Host != "0.0.0.0" || c.APIKeyPrefix != "cr_" || !c.Redis.Embedded() {
		t.Fatalf("defaults: %+v", c)
	}
	if len(c.JWTSecret) < 32 || len(c.EncryptionKey) < 32 || c.JWTSecret == c.EncryptionKey {
		t.Fatalf("secrets not generated: %q %q", c.JWTSecret, c.EncryptionKey)
	}
	if strings.Join(c.GeneratedSecrets, ",") != "JWT_SECRET,ENCRYPTION_KEY" {
		t.Fatalf("GeneratedSecrets = %v", c.GeneratedSecrets)
	}
	if c.VS.BaseURL != "https://app.verticalstudio.ai" || c.VS.Enabled() {
		t.Fatalf("VS defaults: %+v", c.VS)
	}
}

func TestRealRedisNeedsSecrets(t *testing.T) {
	_, err := Load(envOf(map[string]string{"REDIS_URL": "redis://localhost:6379/0"}))
	if err == nil || !strings.HasPrefix(err.Error(), "JWT_SECRET:") {
		t.Fatalf("err = %v, want one naming JWT_SECRET", err)
	}
	c, err := Load(envOf(map[string]string{
		"REDIS_HOST": "redis.example", "REDIS_ENABLE_TLS": "true", "REDIS_DB": "3",
		"JWT_SECRET": strings.Repeat("a", 32), "ENCRYPTION_KEY": strings.Repeat("b", 32),
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Redis.Embedded() || !c.Redis.TLS || c.Redis.DB != 3 || len(c.GeneratedSecrets) != 0 {
		t.Fatalf("redis config: %+v", c.Redis)
	}
}

func TestBadValuesNameTheVariable(t *testing.T) {
	secret := strings.Repeat("s", 32)
	for _, tc := range []struct {
		env  map[string]string
		name string
	}{
		{map[string]string{"PORT": "http"}, "PORT"},
		{map[string]string{"PORT": "70000"}, "PORT"},
		{map[string]string{"LOG_LEVEL": "loud"}, "LOG_LEVEL"},
		{map[string]string{"REDIS_URL": "http://x"}, "REDIS_URL"},
		{map[string]string{"REDIS_DB": "99"}, "REDIS_DB"},
		{map[string]string{"REDIS_ENABLE_TLS": "maybe"}, "REDIS_ENABLE_TLS"},
		{map[string]string{"SHUTDOWN_TIMEOUT": "10"}, "SHUTDOWN_TIMEOUT"},
		{map[string]string{"VS_BASE_URL": "app.verticalstudio.ai"}, "VS_BASE_URL"},
		{map[string]string{"API_KEY_PREFIX": "cr key"}, "API_KEY_PREFIX"},
		{map[string]string{"KEY_CACHE_TTL": "5s"}, "KEY_CACHE_TTL"},
		{map[string]string{"VS_EMAIL": "a@b.c"}, "VS_EMAIL"},
		{map[string]string{"TRUSTED_PROXIES": "10.0.0.0/8,proxy.local"}, "TRUSTED_PROXIES"},
		{map[string]string{"REDIS_HOST": "r", "JWT_SECRET": "short", "ENCRYPTION_KEY": secret}, "JWT_SECRET"},
		{map[string]string{"REDIS_HOST": "r", "JWT_SECRET": secret}, "ENCRYPTION_KEY"},
	} {
		_, err := Load(envOf(tc.env))
		if err == nil || !strings.HasPrefix(err.Error(), tc.name+":") && !strings.HasPrefix(err.Error(), tc.name+" ") {
			t.Errorf("%v: err = %v, want it to start with %s", tc.env, err, tc.name)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: error is not one line: %q", tc.env, err)
		}
	}
}

func TestRedisURLErrorHidesPassword(t *testing.T) {
	_, err := Load(envOf(map[string]string{"REDIS_URL": "http://user:hunter2@host:6379"}))
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("err = %v: must name REDIS_URL without echoing the password", err)
	}
}

func TestDurations(t *testing.T) {
	c, err := Load(envOf(map[string]string{"SHUTDOWN_TIMEOUT": "45s", "VS_REFRESH_INTERVAL": "30m"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.ShutdownTimeout != 45*time.Second || c.VS.RefreshInterval != 30*time.Minute {
		t.Fatalf("durations: %v %v", c.ShutdownTimeout, c.VS.RefreshInterval)
	}
}
