package gemini

// Model is an entry of GET /v1beta/models.
type Model struct {
	Name                       string   `json:"name"`
	BaseModelID                string   `json:"baseModelId"`
	Version                    string   `json:"version"`
	DisplayName                string   `json:"displayName"`
	Description                string   `json:"description"`
	InputTokenLimit            int      `json:"inputTokenLimit"`
	OutputTokenLimit           int      `json:"outputTokenLimit"`
	SupportedGenerationMethods []string `json:"supportedGenerationMethods"`
	Temperature                float64  `json:"temperature"`
	MaxTemperature             float64  `json:"maxTemperature"`
	TopP                       float64  `json:"topP"`
	TopK                       int      `json:"topK"`
	Thinking                   bool     `json:"thinking"`
}

func model(id, version, display string, thinking bool) Model {
	return Model{Name: "models/" + id, BaseModelID: id, Version: version, DisplayName: display,
		Description: display + " (served through the relay)", InputTokenLimit: 1048576, OutputTokenLimit: 65536,
		SupportedGenerationMethods: []string{"generateContent", "countTokens", "streamGenerateContent"},
		Temperature:                1, MaxTemperature: 2, TopP: 0.95, TopK: 64, Thinking: thinking}
}

// Models is the list the relay answers GET models with. Accounts may
// restrict what they serve; the list is what clients may ask for by name.
var Models = []Model{
	model("gemini-3-pro-preview", "3-pro-preview", "Gemini 3 Pro Preview", true),
	model("gemini-3-flash-preview", "3-flash-preview", "Gemini 3 Flash Preview", true),
	model("gemini-2.5-pro", "2.5", "Gemini 2.5 Pro", true),
	model("gemini-2.5-flash", "001", "Gemini 2.5 Flash", true),
	model("gemini-2.5-flash-lite", "001", "Gemini 2.5 Flash-Lite", true),
	model("gemini-2.0-flash", "2.0", "Gemini 2.0 Flash", false),
}

// FindModel returns the listed model named id (with or without "models/").
func FindModel(id string) (Model, bool) {
	for _, m := range Models {
		if m.Name == id || m.BaseModelID == id {
			return m, true
		}
	}
	return Model{}, false
}
