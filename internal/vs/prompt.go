package vs

import (
	"strings"
	"unicode/utf8"
)

// Message is one chat message reduced to what the upstream takes: a role
// and its text.
type Message struct {
	Role    string // system (or developer), user, assistant; others are dropped
	Content string
}

// BuildPrompt flattens messages the way the web app's single-message chat
// takes them: system (and developer) messages, joined with blank lines,
// become the custom system prompt; user and assistant turns become a
// "Human: …"/"Assistant: …" transcript ending in "Assistant:". Empty
// contents and other roles are dropped. The transcript keeps the newest
// turns whose contents add up to at most historyChars characters (the
// newest turn is always kept); 0 means no cap.
func BuildPrompt(messages []Message, historyChars int) (system, prompt string) {
	var sys []string
	type turn struct{ label, text string }
	var turns []turn
	for _, m := range messages {
		text := strings.TrimSpace(m.Content)
		if text == "" {
			continue
		}
		switch m.Role {
		case "system", "developer":
			sys = append(sys, text)
		case "user", "human":
			turns = append(turns, turn{"Human: ", text})
		case "assistant", "ai":
			turns = append(turns, turn{"Assistant: ", text})
		}
	}
	first := 0
	if historyChars > 0 {
		total := 0
		for i := len(turns) - 1; i >= 0; i-- {
			total += utf8.RuneCountInString(turns[i].text)
			if total > historyChars && i < len(turns)-1 {
				first = i + 1
				break
			}
		}
	}
	var b strings.Builder
	for _, t := range turns[first:] {
		b.WriteString("\n\n")
		b.WriteString(t.label)
		b.WriteString(t.text)
	}
	b.WriteString("\n\nAssistant:")
	return strings.Join(sys, "\n\n"), strings.TrimSpace(b.String())
}
