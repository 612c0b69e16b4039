// Package deployfiles checks the Dockerfile and docker-compose.yml with the
// parsers Docker itself uses (BuildKit's Dockerfile parser and the
// compose-spec loader), since no Docker engine runs in CI.
package deployfiles

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

const root = "../.."

func TestDockerfile(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := parser.Parse(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("Dockerfile does not parse: %v", err)
	}
	stages, _, err := instructions.Parse(res.AST, nil)
	if err != nil {
		t.Fatalf("Dockerfile instructions: %v", err)
	}
	byName := map[string]instructions.Stage{}
	for _, s := range stages {
		byName[s.Name] = s
	}
	for _, name := range []string{"build", "relay", "fakeupstream"} {
		if _, ok := byName[name]; !ok {
			t.Fatalf("no stage %q (stages: %v)", name, stageNames(stages))
		}
	}
	if last := stages[len(stages)-1].Name; last != "relay" {
		t.Errorf("the last stage (what `docker build .` and Spaces produce) is %q, want relay", last)
	}

	// Every program the build stage compiles exists in the repository, and is
	// built static.
	build := byName["build"]
	var sawStatic bool
	for _, cmd := range build.Commands {
		switch c := cmd.(type) {
		case *instructions.EnvCommand:
			for _, kv := range c.Env {
				if kv.Key == "CGO_ENABLED" && kv.Value == "0" {
					sawStatic = true
				}
			}
		case *instructions.RunCommand:
			for _, line := range c.CmdLine {
				for _, f := range strings.Fields(line) {
					if strings.HasPrefix(f, "./cmd/") {
						if _, err := os.Stat(filepath.Join(root, f)); err != nil {
							t.Errorf("build compiles %s, which does not exist", f)
						}
					}
				}
			}
		}
	}
	if !sawStatic {
		t.Error("build stage does not set CGO_ENABLED=0: the binary would not be static")
	}

	relay := byName["relay"]
	var user, port string
	var exposed []string
	for _, cmd := range relay.Commands {
		switch c := cmd.(type) {
		case *instructions.UserCommand:
			user = c.User
		case *instructions.ExposeCommand:
			exposed = append(exposed, c.Ports...)
		case *instructions.EnvCommand:
			for _, kv := range c.Env {
				if kv.Key == "PORT" {
					port = kv.Value
				}
			}
		case *instructions.CopyCommand:
			if c.From != "" {
				if _, ok := byName[c.From]; !ok {
					t.Errorf("COPY --from=%s names no stage", c.From)
				}
			}
		}
	}
	if user == "" || strings.HasPrefix(user, "root") || strings.HasPrefix(user, "0") {
		t.Errorf("relay stage runs as %q, want a non-root user", user)
	}
	if port != "7860" || !slices.Contains(exposed, "7860") {
		t.Errorf("relay stage: PORT=%q, EXPOSE %v; want 7860 for both (Hugging Face Spaces)", port, exposed)
	}
}

func stageNames(ss []instructions.Stage) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.Name)
	}
	return out
}

func TestCompose(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"JWT_SECRET": strings.Repeat("j", 32), "ENCRYPTION_KEY": strings.Repeat("e", 32), "ADMIN_PASSWORD": "pw",
	}
	details := types.ConfigDetails{
		WorkingDir:  root,
		ConfigFiles: []types.ConfigFile{{Filename: "docker-compose.yml", Content: raw}},
		Environment: env,
	}
	p, err := loader.LoadWithContext(context.Background(), details, func(o *loader.Options) {
		o.SetProjectName("relay", true)
		o.SkipResolveEnvironment = false
	})
	if err != nil {
		t.Fatalf("docker-compose.yml does not load: %v", err)
	}
	relay, err := p.GetService("relay")
	if err != nil {
		t.Fatal(err)
	}
	if relay.Build == nil || relay.Build.Target != "relay" {
		t.Errorf("relay service builds %+v, want target relay", relay.Build)
	}
	if len(relay.Ports) != 1 || relay.Ports[0].Target != 7860 {
		t.Errorf("relay ports = %+v, want 7860", relay.Ports)
	}
	if got := deref(relay.Environment["REDIS_URL"]); got != "redis://redis:6379/0" {
		t.Errorf("relay REDIS_URL = %q", got)
	}
	if got := deref(relay.Environment["VS_BASE_URL"]); !strings.HasPrefix(got, "http://fakeupstream:") {
		t.Errorf("relay VS_BASE_URL = %q, want the fake upstream service", got)
	}
	if _, ok := relay.DependsOn["redis"]; !ok {
		t.Error("relay does not depend on redis")
	}

	redis, err := p.GetService("redis")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(redis.Command, "--appendonly") || len(redis.Volumes) == 0 {
		t.Errorf("redis is not persistent: command %v, volumes %v", redis.Command, redis.Volumes)
	}
	if len(redis.Ports) != 0 {
		t.Errorf("redis publishes ports %v on the host; only the relay should reach it", redis.Ports)
	}
	fake, err := p.GetService("fakeupstream")
	if err != nil {
		t.Fatal(err)
	}
	if fake.Build == nil || fake.Build.Target != "fakeupstream" {
		t.Errorf("fakeupstream builds %+v", fake.Build)
	}

	// Without the required secrets, compose refuses to start, naming them.
	details.Environment = map[string]string{}
	if _, err := loader.LoadWithContext(context.Background(), details, func(o *loader.Options) {
		o.SetProjectName("relay", true)
	}); err == nil || !strings.Contains(err.Error(), "JWT_SECRET") {
		t.Errorf("compose without JWT_SECRET: err = %v, want one naming JWT_SECRET", err)
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
