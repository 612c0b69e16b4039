package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/rs/zerolog"

	"github.com/relaydev/relay/ingress"
	"github.com/relaydev/relay/internal/config"
	"github.com/relaydev/relay/internal/metrics"
	"github.com/relaydev/relay/internal/redisconn"
)

// service is a long-running part of the relay.
type service interface {
	Start(ctx context.Context) error
	Stop()
}

// relay is the assembled process: its parts in start order. They stop in
// reverse order, so the HTTP server (started last) stops accepting first and
// drains its streams, then the worker pools stop fetching and finish or hand
// back their entries, buffered usage events are flushed, and Redis closes
// last.
type relay struct {
	log      zerolog.Logger
	redis    *redisconn.Conn
	services []service
	started  []service
}

func assemble(ctx context.Context, cfg config.Config, log zerolog.Logger) (*relay, error) {
	for _, name := range cfg.GeneratedSecrets {
		log.Warn().Str("variable", name).Msg("not set: generated a random value for this process; " +
			"sessions and encrypted data will not survive a restart")
	}
	conn, err := redisconn.Open(ctx, cfg.Redis, log.With().Str("component", "redis").Logger())
	if err != nil {
		return nil, err
	}
	m := metrics.New()
	r := &relay{log: log, redis: conn}

	srv := ingress.New(ingress.Deps{
		Config:  cfg,
		Log:     log.With().Str("component", "http").Logger(),
		Redis:   conn.Client,
		Metrics: m,
	})
	r.services = append(r.services, srv)
	return r, nil
}

func (r *relay) start(ctx context.Context) error {
	for _, s := range r.services {
		if err := s.Start(ctx); err != nil {
			return err
		}
		r.started = append(r.started, s)
	}
	return nil
}

func (r *relay) stop() {
	done := make(chan struct{})
	go func() {
		for i := len(r.started) - 1; i >= 0; i-- {
			r.started[i].Stop()
		}
		r.redis.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		r.log.Error().Msg("shutdown did not finish in two minutes; exiting anyway")
	}
}

// runCommand runs a command-line subcommand instead of the server.
func runCommand(ctx context.Context, cfg config.Config, log zerolog.Logger, args []string, stdout, stderr io.Writer) int {
	_ = ctx
	_ = cfg
	_ = log
	_ = stdout
	fmt.Fprintf(stderr, "relay: unknown command %q (try: relay keys help)\n", args[0])
	return 2
}
