package gemini

import "encoding/json"

// Usage is what one answer used, from its usageMetadata.
type Usage struct {
	Prompt     int64 // promptTokenCount: every input token, cached ones included
	Candidates int64 // candidatesTokenCount: the answer, without thoughts
	Cached     int64 // cachedContentTokenCount: input served from the cache
	Thoughts   int64 // thoughtsTokenCount: thinking, billed as output
	ToolPrompt int64 // toolUsePromptTokenCount: tool results fed back as input
	Total      int64 // totalTokenCount
	Seen       bool  // a usageMetadata was present
}

// Input is the uncached input.
func (u Usage) Input() int64 { return max(0, u.Prompt+u.ToolPrompt-u.Cached) }

// Output is what the model generated, thoughts included.
func (u Usage) Output() int64 { return u.Candidates + u.Thoughts }

type usageMetadata struct {
	Prompt     int64 `json:"promptTokenCount"`
	Candidates int64 `json:"candidatesTokenCount"`
	Cached     int64 `json:"cachedContentTokenCount"`
	Thoughts   int64 `json:"thoughtsTokenCount"`
	ToolPrompt int64 `json:"toolUsePromptTokenCount"`
	Total      int64 `json:"totalTokenCount"`
}

func (m *usageMetadata) usage() Usage {
	return Usage{Prompt: m.Prompt, Candidates: m.Candidates, Cached: m.Cached, Thoughts: m.Thoughts,
		ToolPrompt: m.ToolPrompt, Total: m.Total, Seen: true}
}

// merge keeps the larger of each count: streamed chunks carry running
// totals, and early chunks leave some out.
func (u *Usage) merge(v Usage) {
	u.Prompt = max(u.Prompt, v.Prompt)
	u.Candidates = max(u.Candidates, v.Candidates)
	u.Cached = max(u.Cached, v.Cached)
	u.Thoughts = max(u.Thoughts, v.Thoughts)
	u.ToolPrompt = max(u.ToolPrompt, v.ToolPrompt)
	u.Total = max(u.Total, v.Total)
	u.Seen = true
}

// UsageFromJSON reads usageMetadata from a generateContent answer, native or
// wrapped by Code Assist ({"response": ...}).
func UsageFromJSON(raw []byte) (Usage, bool) {
	var c struct {
		Response *struct {
			UsageMetadata *usageMetadata `json:"usageMetadata"`
		} `json:"response"`
		UsageMetadata *usageMetadata `json:"usageMetadata"`
	}
	if json.Unmarshal(raw, &c) != nil {
		return Usage{}, false
	}
	m := c.UsageMetadata
	if m == nil && c.Response != nil {
		m = c.Response.UsageMetadata
	}
	if m == nil {
		return Usage{}, false
	}
	return m.usage(), true
}
