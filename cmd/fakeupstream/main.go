// Command fakeupstream serves fake upstreams for tests, docker-compose and
// the load generator. Each fake is mounted under a path prefix of the shared
// listener (-addr), and can also be served alone at the root of a port of
// its own (e.g. -vs-addr), which is how a base URL such as VS_BASE_URL
// points at it.
//
// Fakes so far: Vertical Studio (prefix /vs). Others add themselves to
// mounts() with their own flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/relaydev/relay/internal/fakeanthropic"
	"github.com/relaydev/relay/internal/fakegemini"
	"github.com/relaydev/relay/internal/fakevs"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stderr))
}

// mount is one fake: served under prefix on the shared listener, and at the
// root of addr when addr is set.
type mount struct {
	name    string
	prefix  string
	addr    string
	handler http.Handler
}

// options are the command line, with defaults from the environment.
type options struct {
	addr string
	vs   vsOptions
	// apiKey is the upstream API key the Anthropic and Gemini fakes accept.
	apiKey string
}

type vsOptions struct {
	addr, email, password, form, encoding string
	delay, loginDelay                     time.Duration
	chunked                               bool
}

func parse(args []string, getenv func(string) string, stderr io.Writer) (options, error) {
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	envDur := func(name string) time.Duration {
		d, _ := time.ParseDuration(getenv(name))
		return d
	}
	var o options
	fs := flag.NewFlagSet("fakeupstream", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.addr, "addr", env("FAKE_ADDR", ":8090"), "shared listener; each fake is under its prefix (env FAKE_ADDR)")
	fs.StringVar(&o.vs.addr, "vs-addr", env("FAKE_VS_ADDR", ""), "also serve the Vertical Studio fake at the root of this address (env FAKE_VS_ADDR)")
	fs.StringVar(&o.vs.email, "vs-email", env("FAKE_VS_EMAIL", "user@example.com"), "account email the fake accepts (env FAKE_VS_EMAIL)")
	fs.StringVar(&o.vs.password, "vs-password", env("FAKE_VS_PASSWORD", "secret"), "account password the fake accepts (env FAKE_VS_PASSWORD)")
	fs.StringVar(&o.vs.form, "vs-form", env("FAKE_VS_FORM", "json"), "chat-id form: json, location, redirect or body (env FAKE_VS_FORM)")
	fs.StringVar(&o.vs.encoding, "vs-encoding", env("FAKE_VS_ENCODING", ""), "compress answers: br, gzip or empty (env FAKE_VS_ENCODING)")
	fs.DurationVar(&o.vs.delay, "vs-delay", envDur("FAKE_VS_DELAY"), "pause before each answer line (env FAKE_VS_DELAY)")
	fs.DurationVar(&o.vs.loginDelay, "vs-login-delay", envDur("FAKE_VS_LOGIN_DELAY"), "pause in the password step (env FAKE_VS_LOGIN_DELAY)")
	fs.BoolVar(&o.vs.chunked, "vs-chunked-cookie", getenv("FAKE_VS_CHUNKED_COOKIE") == "true", "split the session cookie into .0/.1 chunks (env FAKE_VS_CHUNKED_COOKIE)")
	fs.StringVar(&o.apiKey, "api-key", env("FAKE_API_KEY", "fake-upstream-key"), "API key the Anthropic (/anthropic) and Gemini (/gemini) fakes accept (env FAKE_API_KEY)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if _, ok := fakevs.ParseForm(o.vs.form); !ok {
		return o, fmt.Errorf("-vs-form: %q is not json, location, redirect or body", o.vs.form)
	}
	if o.vs.encoding != "" && o.vs.encoding != "br" && o.vs.encoding != "gzip" {
		return o, fmt.Errorf("-vs-encoding: %q is not br, gzip or empty", o.vs.encoding)
	}
	return o, nil
}

// mounts builds every fake.
func mounts(o options) []mount {
	form, _ := fakevs.ParseForm(o.vs.form)
	vsFake := fakevs.New(fakevs.Options{
		Email: o.vs.email, Password: o.vs.password, Form: form, Encoding: o.vs.encoding,
		Delay: o.vs.delay, LoginDelay: o.vs.loginDelay, ChunkedCookie: o.vs.chunked,
	})
	claude := fakeanthropic.New()
	claude.AddAPIKey(o.apiKey)
	gemini := fakegemini.New()
	gemini.AddAPIKey(o.apiKey)
	return []mount{
		{name: "vertical-studio", prefix: "/vs", addr: o.vs.addr, handler: vsFake},
		{name: "anthropic", prefix: "/anthropic", handler: claude},
		{name: "gemini", prefix: "/gemini", handler: gemini},
	}
}

// router serves each mount under its prefix, and lists them at "/".
func router(ms []mount) http.Handler {
	mux := http.NewServeMux()
	var names []string
	for _, m := range ms {
		mux.Handle(m.prefix+"/", http.StripPrefix(m.prefix, m.handler))
		names = append(names, m.name+" "+m.prefix)
	}
	sort.Strings(names)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "fake upstreams:\n"+strings.Join(names, "\n")+"\n")
	})
	return mux
}

func run(args []string, getenv func(string) string, stderr io.Writer) int {
	o, err := parse(args, getenv, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "fakeupstream:", err)
		return 2
	}
	ms := mounts(o)
	servers := []*http.Server{{Addr: o.addr, Handler: router(ms), ReadHeaderTimeout: 10 * time.Second}}
	for _, m := range ms {
		if m.addr != "" {
			servers = append(servers, &http.Server{Addr: m.addr, Handler: m.handler, ReadHeaderTimeout: 10 * time.Second})
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	errs := make(chan error, len(servers))
	for _, s := range servers {
		ln, err := net.Listen("tcp", s.Addr)
		if err != nil {
			fmt.Fprintln(stderr, "fakeupstream:", err)
			return 1
		}
		fmt.Fprintf(stderr, "fakeupstream: listening on %s\n", ln.Addr())
		go func() { errs <- s.Serve(ln) }()
	}
	select {
	case <-ctx.Done():
	case err := <-errs:
		fmt.Fprintln(stderr, "fakeupstream:", err)
		return 1
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		_ = s.Shutdown(sctx)
	}
	return 0
}
