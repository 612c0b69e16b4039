package config

import "testing"

func TestPprofAddrOnlyOnLoopback(t *testing.T) {
	c, err := Load(envOf(nil))
	if err != nil || c.PprofAddr != "" {
		t.Fatalf("default: %q %v", c.PprofAddr, err)
	}
	for _, ok := range []string{"127.0.0.1:6060", "[::1]:6060", "localhost:6060"} {
		if c, err := Load(envOf(map[string]string{"PPROF_ADDR": ok})); err != nil || c.PprofAddr != ok {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{":6060", "0.0.0.0:6060", "10.0.0.1:6060", "127.0.0.1", "example.com:6060"} {
		if _, err := Load(envOf(map[string]string{"PPROF_ADDR": bad})); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
