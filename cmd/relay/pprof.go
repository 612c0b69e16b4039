package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// pprofServer serves Go's runtime profiles (/debug/pprof/...) on a loopback
// address, only when PPROF_ADDR is set: the load generator takes CPU and
// allocation profiles of the relay under load through it.
type pprofServer struct {
	addr string
	log  zerolog.Logger
	srv  *http.Server
	once sync.Once
}

func newPprofServer(addr string, log zerolog.Logger) *pprofServer {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return &pprofServer{addr: addr, log: log,
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
}

// Start listens and serves in the background.
func (p *pprofServer) Start(ctx context.Context) error {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", p.addr)
	if err != nil {
		return err
	}
	p.log.Warn().Str("addr", ln.Addr().String()).Msg("serving pprof profiles (PPROF_ADDR)")
	go func() {
		if err := p.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.log.Error().Err(err).Msg("pprof server")
		}
	}()
	return nil
}

// Stop closes the listener and open profile requests. It is idempotent.
func (p *pprofServer) Stop() {
	p.once.Do(func() { _ = p.srv.Close() })
}
