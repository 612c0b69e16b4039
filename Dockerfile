# syntax=docker/dockerfile:1

# Build: one static binary per program.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ENV CGO_ENABLED=0
RUN go build -trimpath -ldflags="-s -w" -o /out/relay ./cmd/relay \
 && go build -trimpath -ldflags="-s -w" -o /out/fakeupstream ./cmd/fakeupstream

# The fake upstream, for docker-compose and local trials.
FROM gcr.io/distroless/static-debian12:nonroot AS fakeupstream
COPY --from=build /out/fakeupstream /fakeupstream
ENV FAKE_ADDR=:8080
USER nonroot:nonroot
EXPOSE 8080
ENTRYPOINT ["/fakeupstream"]

# The relay (the default target, and what Hugging Face Spaces builds).
FROM gcr.io/distroless/static-debian12:nonroot AS relay
COPY --from=build /out/relay /relay
ENV PORT=7860 HOST=0.0.0.0
EXPOSE 7860
USER nonroot:nonroot
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["/relay", "healthcheck"]
ENTRYPOINT ["/relay"]
