// Command relay serves a team's upstream AI accounts behind one endpoint and
// the team's own API keys. Configuration comes from the environment (see
// README.md); `relay keys …` manages API keys from the command line.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/config"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := config.Load(getenv)
	if err != nil {
		fmt.Fprintf(stderr, "relay: configuration: %v\n", err)
		return 2
	}
	log := newLogger(cfg, stdout)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	if len(args) > 0 {
		return runCommand(ctx, cfg, log, args, stdout, stderr)
	}

	r, err := assemble(ctx, cfg, log)
	if err != nil {
		log.Error().Err(err).Msg("cannot start")
		return 1
	}
	if err := r.start(ctx); err != nil {
		log.Error().Err(err).Msg("cannot start")
		r.stop()
		return 1
	}
	<-ctx.Done()
	stop() // a second signal now kills the process at once
	log.Info().Msg("shutting down")
	r.stop()
	log.Info().Msg("stopped")
	return 0
}

// newLogger writes JSON lines to out, or readable lines when out is a terminal
// (LOG_FORMAT=auto), at LOG_LEVEL.
func newLogger(cfg config.Config, out io.Writer) zerolog.Logger {
	level, err := zerolog.ParseLevel(cfg.LogLevel)
	if err != nil {
		level = zerolog.InfoLevel
	}
	w := out
	console := cfg.LogFormat == "console"
	if cfg.LogFormat == "auto" {
		if f, ok := out.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
			console = true
		}
	}
	if console {
		w = zerolog.ConsoleWriter{Out: out, TimeFormat: "15:04:05.000"}
	}
	return zerolog.New(w).Level(level).With().Timestamp().Logger()
}
