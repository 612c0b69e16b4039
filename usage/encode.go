package usage

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
)

// AppendJSON appends ev as compact JSON, the same document encoding/json
// makes from Event (field names and omitempty as in its tags), without
// reflection: the recorder encodes one event per request.
func (e *Event) AppendJSON(b []byte) []byte {
	b = append(b, `{"id":`...)
	b = appendString(b, e.ID)
	b = append(b, `,"request_id":`...)
	b = appendString(b, e.RequestID)
	b = append(b, `,"time":"`...)
	b = e.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","key_id":`...)
	b = appendString(b, e.KeyID)
	if e.AccountID != "" {
		b = append(b, `,"account_id":`...)
		b = appendString(b, e.AccountID)
	}
	b = append(b, `,"service":`...)
	b = appendString(b, e.Service)
	b = append(b, `,"model":`...)
	b = appendString(b, e.Model)
	if e.UpstreamModel != "" {
		b = append(b, `,"upstream_model":`...)
		b = appendString(b, e.UpstreamModel)
	}
	b = append(b, `,"input_tokens":`...)
	b = strconv.AppendInt(b, e.InputTokens, 10)
	b = append(b, `,"output_tokens":`...)
	b = strconv.AppendInt(b, e.OutputTokens, 10)
	if e.CacheCreateTokens != 0 {
		b = append(b, `,"cache_create_tokens":`...)
		b = strconv.AppendInt(b, e.CacheCreateTokens, 10)
	}
	if e.CacheReadTokens != 0 {
		b = append(b, `,"cache_read_tokens":`...)
		b = strconv.AppendInt(b, e.CacheReadTokens, 10)
	}
	if e.Estimated {
		b = append(b, `,"estimated":true`...)
	}
	if e.Images != 0 {
		b = append(b, `,"images":`...)
		b = strconv.AppendInt(b, int64(e.Images), 10)
	}
	if e.ImageSize != "" {
		b = append(b, `,"image_size":`...)
		b = appendString(b, e.ImageSize)
	}
	b = append(b, `,"latency_ms":`...)
	b = strconv.AppendInt(b, e.LatencyMs, 10)
	if e.TTFBMs != 0 {
		b = append(b, `,"ttfb_ms":`...)
		b = strconv.AppendInt(b, e.TTFBMs, 10)
	}
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(e.Status), 10)
	if e.ErrorClass != "" {
		b = append(b, `,"error_class":`...)
		b = appendString(b, e.ErrorClass)
	}
	if e.TokenWindowSec != 0 {
		b = append(b, `,"token_window_sec":`...)
		b = strconv.AppendInt(b, e.TokenWindowSec, 10)
	}
	return append(b, '}')
}

// appendString appends s as a JSON string. Plain ASCII without quotes,
// backslashes or control characters (ids, model names) is copied as is;
// anything else goes through encoding/json, which escapes it.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // marshalling a string cannot fail
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// errMalformed marks an event that cannot be counted as it is.
var errMalformed = errors.New("malformed usage event")

// DecodeEvent parses an event that AppendJSON (or encoding/json) made and
// checks that it can be counted: it has an id and a time, and no negative
// counts.
func DecodeEvent(data []byte) (Event, error) {
	var ev Event
	if err := json.Unmarshal(data, &ev); err != nil {
		return Event{}, fmt.Errorf("%w: %v", errMalformed, err)
	}
	if err := ev.validate(); err != nil {
		return Event{}, err
	}
	return ev, nil
}

func (e *Event) validate() error {
	switch {
	case e.ID == "":
		return fmt.Errorf("%w: no id", errMalformed)
	case e.Time.IsZero():
		return fmt.Errorf("%w: no time", errMalformed)
	case e.InputTokens < 0 || e.OutputTokens < 0 || e.CacheCreateTokens < 0 || e.CacheReadTokens < 0 ||
		e.Images < 0 || e.LatencyMs < 0 || e.TokenWindowSec < 0:
		return fmt.Errorf("%w: negative count", errMalformed)
	}
	return nil
}
