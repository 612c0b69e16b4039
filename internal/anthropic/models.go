package anthropic

// Model is an entry of GET /v1/models.
type Model struct {
	Type        string `json:"type"`
	ID          string `json:"id"`
	DisplayName string `json:"display_name"`
	CreatedAt   string `json:"created_at"`
}

// Models is the list the relay answers GET /v1/models with, newest first.
// Accounts may restrict what they serve; the list is what clients may ask
// for by name.
var Models = []Model{
	{"model", "claude-opus-4-5", "Claude Opus 4.5", "2025-11-24T00:00:00Z"},
	{"model", "claude-haiku-4-5", "Claude Haiku 4.5", "2025-10-15T00:00:00Z"},
	{"model", "claude-sonnet-4-5", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"},
	{"model", "claude-opus-4-1", "Claude Opus 4.1", "2025-08-05T00:00:00Z"},
	{"model", "claude-opus-4-0", "Claude Opus 4", "2025-05-22T00:00:00Z"},
	{"model", "claude-sonnet-4-0", "Claude Sonnet 4", "2025-05-22T00:00:00Z"},
	{"model", "claude-3-7-sonnet-latest", "Claude Sonnet 3.7", "2025-02-24T00:00:00Z"},
	{"model", "claude-3-5-haiku-latest", "Claude Haiku 3.5", "2024-10-22T00:00:00Z"},
}
