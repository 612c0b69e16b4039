package main

import (
	"fmt"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/ingress"
	"github.com/relaydev/relay/internal/config"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/metrics"
	"github.com/relaydev/relay/internal/secretbox"
	"github.com/relaydev/relay/internal/vs"
	"github.com/relaydev/relay/session"
	"github.com/relaydev/relay/workers"
)

// verticalStudio is the assembled Vertical Studio side: the shared session,
// the archive pool, and what the OpenAI-compatible routes are served with.
type verticalStudio struct {
	session *session.VS
	archive *workers.Pool
	sweeper *workers.ArchiveSweeper
	deps    *ingress.VerticalStudio
	health  ingress.HealthCheck
}

// assembleVS builds the Vertical Studio parts from cfg.VS. The caller adds
// session and archive to its services before the HTTP server, so they stop
// after it: the last requests' archive jobs are still taken.
func assembleVS(cfg config.Config, rdb redis.UniversalClient, ks keyspace.Keyspace, box *secretbox.Box,
	m *metrics.Metrics, log zerolog.Logger) (*verticalStudio, error) {
	models, err := vs.LoadModels(cfg.VS.ModelMapping, vs.DefaultTextModels)
	if err != nil {
		return nil, fmt.Errorf("VS_MODEL_MAPPING: %w", err)
	}
	client := vs.New(vs.Options{BaseURL: cfg.VS.BaseURL})
	sess := session.NewVS(session.VSOptions{
		Redis: rdb, Keys: ks, Box: box, Client: client, Email: cfg.VS.Email, Password: cfg.VS.Password,
		RefreshInterval: cfg.VS.RefreshInterval, Log: log.With().Str("component", "vs-session").Logger(),
	})
	archiveCfg := workers.ArchivePoolConfig(ks, workers.ConsumerName(),
		workers.ArchiveHandler(client, sess), cfg.WorkerConcurrency,
		log.With().Str("component", "archive-pool").Logger(), m)
	archiveCfg.VisibilityTimeout = cfg.WorkerVisibility
	pool, err := workers.New(rdb, archiveCfg)
	if err != nil {
		return nil, fmt.Errorf("archive pool: %w", err)
	}
	queue := workers.NewArchiveQueue(rdb, ks)
	return &verticalStudio{
		session: sess,
		archive: pool,
		sweeper: &workers.ArchiveSweeper{Queue: queue, Log: log.With().Str("component", "archive-sweeper").Logger()},
		deps: &ingress.VerticalStudio{
			Caller:       &vs.Caller{Client: client, Creds: sess},
			Models:       models,
			Archive:      queue,
			MaxBodyBytes: cfg.VS.MaxBodyBytes,
			HistoryChars: cfg.VS.HistoryChars,
		},
		health: ingress.HealthCheck{Name: "vertical_studio", Check: sess.Health},
	}, nil
}
