package main

import (
	"fmt"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/ingress"
	"github.com/relaydev/relay/internal/config"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/metrics"
	"github.com/relaydev/relay/internal/vs"
	"github.com/relaydev/relay/workers"
)

// images is the assembled image generation side: the pool that runs image
// jobs, the queue that waits for their results, and the route's deps.
type images struct {
	pool  *workers.Pool
	queue *workers.ImageQueue
	deps  *ingress.Images
}

// assembleImages builds the image side on the Vertical Studio session. The
// caller adds pool and queue before the HTTP server, so they stop after it.
func assembleImages(cfg config.Config, rdb redis.UniversalClient, ks keyspace.Keyspace, v *verticalStudio,
	m *metrics.Metrics, log zerolog.Logger) (*images, error) {
	models, err := vs.LoadModels(cfg.VS.ImageMapping, ingress.DefaultImageModels)
	if err != nil {
		return nil, fmt.Errorf("VS_IMAGE_MODEL_MAPPING: %w", err)
	}
	consumer := workers.ConsumerName()
	files := workers.NewImageFiles(rdb, ks, 0)
	worker := workers.NewImageWorker(workers.ImageWorkerOptions{
		Redis: rdb, Keys: ks, Files: files, Archive: workers.NewArchiveQueue(rdb, ks),
		// One attempt per delivery: the pool retries failed jobs with backoff.
		Caller: &vs.Caller{Client: v.deps.Caller.Client, Creds: v.session, Attempts: 1},
		Log:    log.With().Str("component", "image-pool").Logger(),
	})
	poolCfg := worker.PoolConfig(consumer, cfg.WorkerConcurrency, cfg.VS.ImageTimeout, m)
	poolCfg.VisibilityTimeout = cfg.WorkerVisibility
	pool, err := workers.New(rdb, poolCfg)
	if err != nil {
		return nil, fmt.Errorf("image pool: %w", err)
	}
	queue := workers.NewImageQueue(rdb, ks, consumer, log.With().Str("component", "image-queue").Logger())
	return &images{pool: pool, queue: queue,
		deps: &ingress.Images{Models: models, Queue: queue, Files: files, Timeout: cfg.VS.ImageTimeout}}, nil
}
