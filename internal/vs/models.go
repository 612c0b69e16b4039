package vs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

// Model is one client-facing model name and what it maps to upstream.
type Model struct {
	Name      string // what clients ask for
	Upstream  string // settings.modelId sent upstream
	Reasoning bool   // send settings.reasoning "on"
}

// Models is a model mapping in a fixed order (the order /v1/models lists).
type Models struct {
	list   []Model
	byName map[string]Model
}

// DefaultTextModels is the original proxy's mapping (its names from commit
// 753f53b on). Names ending in -thinking turn reasoning on.
var DefaultTextModels = []Model{
	{Name: "claude-3-7-sonnet-thinking", Upstream: "claude-3-7-sonnet-20250219"},
	{Name: "claude-4-sonnet-thinking", Upstream: "claude-4-sonnet-20250514"},
	{Name: "claude-4-opus-thinking", Upstream: "claude-4-opus-20250514"},
	{Name: "deepseek-r1", Upstream: "deepseek-reasoner"},
	{Name: "deepseek-v3", Upstream: "deepseek-chat"},
	{Name: "gemini-2.5-flash-preview", Upstream: "gemini-2.5-flash-preview-04-17"},
	{Name: "gemini-2.5-pro-preview", Upstream: "gemini-2.5-pro-preview-05-06"},
	{Name: "gpt-4.1", Upstream: "gpt-4.1"},
	{Name: "gpt-4.1-mini", Upstream: "gpt-4.1-mini"},
	{Name: "gpt-4o", Upstream: "gpt-4o"},
	{Name: "o3", Upstream: "o3"},
	{Name: "o4-mini", Upstream: "o4-mini"},
	{Name: "grok-3", Upstream: "grok-3"},
}

// ThinkingSuffix on a client model name turns reasoning on.
const ThinkingSuffix = "-thinking"

// NewModels builds a mapping; Reasoning is set for names ending in
// ThinkingSuffix in addition to entries that set it.
func NewModels(list []Model) (*Models, error) {
	m := &Models{byName: make(map[string]Model, len(list))}
	for _, e := range list {
		e.Name, e.Upstream = strings.TrimSpace(e.Name), strings.TrimSpace(e.Upstream)
		if e.Name == "" || e.Upstream == "" {
			return nil, fmt.Errorf("model mapping: empty name or upstream id")
		}
		if _, dup := m.byName[e.Name]; dup {
			return nil, fmt.Errorf("model mapping: %q appears twice", e.Name)
		}
		e.Reasoning = e.Reasoning || strings.HasSuffix(e.Name, ThinkingSuffix)
		m.byName[e.Name] = e
		m.list = append(m.list, e)
	}
	if len(m.list) == 0 {
		return nil, fmt.Errorf("model mapping: no models")
	}
	return m, nil
}

// LoadModels reads a mapping from spec: empty for defaults; a JSON object
// (starting with "{"); or the path of a file holding one. The object maps a
// client name to an upstream id, or to {"modelId": "...", "reasoning": true}.
// Its order is kept.
func LoadModels(spec string, defaults []Model) (*Models, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return NewModels(defaults)
	}
	data := []byte(spec)
	if !strings.HasPrefix(spec, "{") {
		b, err := os.ReadFile(spec)
		if err != nil {
			return nil, fmt.Errorf("model mapping file: %w", err)
		}
		data = b
	}
	list, err := parseMapping(data)
	if err != nil {
		return nil, err
	}
	return NewModels(list)
}

func parseMapping(data []byte) ([]Model, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, fmt.Errorf("model mapping: not a JSON object")
	}
	var list []Model
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("model mapping: %w", err)
		}
		name, _ := t.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("model mapping: %q: %w", name, err)
		}
		var e Model
		var id string
		var obj struct {
			ModelID   string `json:"modelId"`
			Reasoning bool   `json:"reasoning"`
		}
		switch {
		case json.Unmarshal(raw, &id) == nil:
			e = Model{Name: name, Upstream: id}
		case json.Unmarshal(raw, &obj) == nil:
			e = Model{Name: name, Upstream: obj.ModelID, Reasoning: obj.Reasoning}
		default:
			return nil, fmt.Errorf("model mapping: %q: want a string or {\"modelId\",\"reasoning\"}", name)
		}
		list = append(list, e)
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("model mapping: %w", err)
	}
	return list, nil
}

// Lookup returns the model a client name maps to.
func (m *Models) Lookup(name string) (Model, bool) {
	e, ok := m.byName[name]
	return e, ok
}

// List is every model in order. The caller must not modify it.
func (m *Models) List() []Model { return m.list }
