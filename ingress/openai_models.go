package ingress

import (
	"net/http"

	"github.com/gofiber/fiber/v2"

	"github.com/relaydev/relay/internal/vs"
	"github.com/relaydev/relay/usage"
)

type openAIModel struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

func (s *Server) openAIModel(m vs.Model) openAIModel {
	return openAIModel{ID: m.Name, Object: "model", Created: s.started.Unix(), OwnedBy: "vertical-studio"}
}

// handleModels is GET /v1/models: the model mapping, in its order.
func (s *Server) handleModels(c *fiber.Ctx) error {
	if s.vs == nil {
		return vsNotConfigured()
	}
	list := s.vs.Models.List()
	data := make([]openAIModel, len(list))
	for i, m := range list {
		data[i] = s.openAIModel(m)
	}
	return c.JSON(fiber.Map{"object": "list", "data": data})
}

// handleModel is GET /v1/models/:model.
func (s *Server) handleModel(c *fiber.Ctx) error {
	if s.vs == nil {
		return vsNotConfigured()
	}
	name := c.Params("model")
	m, ok := s.vs.Models.Lookup(name)
	if !ok {
		return unknownModel(name)
	}
	return c.JSON(s.openAIModel(m))
}

func unknownModel(name string) *Error {
	return &Error{Status: http.StatusNotFound, Code: "model_not_found", Param: "model",
		Message: "The model `" + name + "` does not exist. GET /v1/models lists the models this relay serves."}
}

func vsNotConfigured() *Error {
	return Errorf(http.StatusServiceUnavailable, "service_unavailable",
		"The OpenAI-compatible routes are not configured on this relay (set VS_EMAIL and VS_PASSWORD).")
}

// openAIRoutes are the OpenAI-compatible routes served by Vertical Studio.
func (s *Server) openAIRoutes() {
	key := s.requireKey(usage.ServiceOpenAI)
	s.app.Get("/v1/models", key, s.handleModels)
	s.app.Get("/v1/models/:model", key, s.handleModel)
	s.app.Post("/v1/chat/completions", key, s.handleChatCompletions)
}
