package gemini

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// apiError is Google's error object: {"error": {code, message, status,
// details}}.
type apiError struct {
	Code    int               `json:"code"`
	Message string            `json:"message"`
	Status  string            `json:"status"`
	Details []json.RawMessage `json:"details"`
}

// UpstreamError is what an upstream error answer says.
type UpstreamError struct {
	Status     string        // e.g. RESOURCE_EXHAUSTED
	Message    string        // the upstream's message
	RetryDelay time.Duration // from a RetryInfo detail or a quotaResetDelay (0 if none)
}

// ErrorFromJSON reads a Google error body: {"error": {...}}, or a list of
// them as the streaming endpoints send.
func ErrorFromJSON(raw []byte) UpstreamError {
	var one struct {
		Error *apiError `json:"error"`
	}
	if json.Unmarshal(raw, &one) != nil || one.Error == nil {
		var many []struct {
			Error *apiError `json:"error"`
		}
		if json.Unmarshal(raw, &many) != nil || len(many) == 0 || many[0].Error == nil {
			msg := strings.TrimSpace(string(raw))
			if len(msg) > 200 {
				msg = msg[:200]
			}
			return UpstreamError{Message: msg}
		}
		one.Error = many[0].Error
	}
	e := one.Error
	out := UpstreamError{Status: e.Status, Message: e.Message}
	for _, d := range e.Details {
		var det struct {
			Type       string            `json:"@type"`
			RetryDelay string            `json:"retryDelay"`
			Metadata   map[string]string `json:"metadata"`
		}
		if json.Unmarshal(d, &det) != nil {
			continue
		}
		delay := det.RetryDelay
		if delay == "" {
			delay = det.Metadata["quotaResetDelay"]
		}
		if delay == "" {
			continue
		}
		if d, err := time.ParseDuration(delay); err == nil && d > out.RetryDelay {
			out.RetryDelay = d
		}
	}
	return out
}

// StatusName is Google's canonical status name for an HTTP status.
func StatusName(status int) string {
	switch status {
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		return "INVALID_ARGUMENT"
	case http.StatusUnauthorized:
		return "UNAUTHENTICATED"
	case http.StatusPaymentRequired, http.StatusTooManyRequests:
		return "RESOURCE_EXHAUSTED"
	case http.StatusForbidden:
		return "PERMISSION_DENIED"
	case http.StatusNotFound:
		return "NOT_FOUND"
	case http.StatusServiceUnavailable, 529:
		return "UNAVAILABLE"
	case http.StatusGatewayTimeout:
		return "DEADLINE_EXCEEDED"
	}
	if status >= 500 {
		return "INTERNAL"
	}
	return "FAILED_PRECONDITION"
}

// ErrorBody is a Google error body.
func ErrorBody(status int, msg string) []byte {
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"code": status, "message": msg, "status": StatusName(status)}})
	return b
}

// RetryAfter is the Retry-After value (whole seconds) for a delay.
func RetryAfter(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return strconv.Itoa(int((d + time.Second - 1) / time.Second))
}
