package anthropic

import "encoding/json"

// Usage is what one Messages response used, as the upstream reported it.
type Usage struct {
	InputTokens       int64
	OutputTokens      int64
	CacheCreateTokens int64 // cache_creation_input_tokens
	CacheReadTokens   int64 // cache_read_input_tokens
	Cache5mTokens     int64 // cache_creation.ephemeral_5m_input_tokens
	Cache1hTokens     int64 // cache_creation.ephemeral_1h_input_tokens
	Model             string
	// Seen says which parts the upstream reported: the start (input and
	// cache tokens) and the final output count.
	SeenStart, SeenEnd bool
}

type wireUsage struct {
	InputTokens              *int64 `json:"input_tokens"`
	OutputTokens             *int64 `json:"output_tokens"`
	CacheCreationInputTokens *int64 `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     *int64 `json:"cache_read_input_tokens"`
	CacheCreation            *struct {
		Ephemeral5m int64 `json:"ephemeral_5m_input_tokens"`
		Ephemeral1h int64 `json:"ephemeral_1h_input_tokens"`
	} `json:"cache_creation"`
}

// apply takes the values a usage object has; counts are cumulative, so a
// later report replaces an earlier one.
func (u *Usage) apply(w *wireUsage) {
	if w == nil {
		return
	}
	set := func(dst *int64, v *int64) {
		if v != nil && *v > 0 {
			*dst = *v
		}
	}
	set(&u.InputTokens, w.InputTokens)
	set(&u.OutputTokens, w.OutputTokens)
	set(&u.CacheCreateTokens, w.CacheCreationInputTokens)
	set(&u.CacheReadTokens, w.CacheReadInputTokens)
	if w.CacheCreation != nil {
		if w.CacheCreation.Ephemeral5m > 0 {
			u.Cache5mTokens = w.CacheCreation.Ephemeral5m
		}
		if w.CacheCreation.Ephemeral1h > 0 {
			u.Cache1hTokens = w.CacheCreation.Ephemeral1h
		}
	}
}

// UsageFromJSON reads usage and model from a non-streaming Messages
// response body.
func UsageFromJSON(body []byte) (Usage, bool) {
	var w struct {
		Model string     `json:"model"`
		Usage *wireUsage `json:"usage"`
	}
	if json.Unmarshal(body, &w) != nil || w.Usage == nil {
		return Usage{}, false
	}
	u := Usage{Model: w.Model, SeenStart: true, SeenEnd: true}
	u.apply(w.Usage)
	return u, true
}

// ErrorFromJSON reads an Anthropic error body's type and message.
func ErrorFromJSON(body []byte) (typ, msg string) {
	var w struct {
		Error struct {
			Type    string `json:"type"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &w) != nil {
		return "", ""
	}
	return w.Error.Type, w.Error.Message
}
