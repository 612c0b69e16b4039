package gemini

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// ClientMetadata is what Gemini CLI says about itself to Code Assist.
var ClientMetadata = map[string]string{
	"ideType":    "IDE_UNSPECIFIED",
	"platform":   "PLATFORM_UNSPECIFIED",
	"pluginType": "GEMINI",
}

// Tier is a Code Assist user tier.
type Tier struct {
	ID                                 string `json:"id"`
	Name                               string `json:"name,omitempty"`
	Description                        string `json:"description,omitempty"`
	IsDefault                          bool   `json:"isDefault,omitempty"`
	UserDefinedCloudaicompanionProject bool   `json:"userDefinedCloudaicompanionProject,omitempty"`
}

// LoadResponse is a loadCodeAssist answer.
type LoadResponse struct {
	CurrentTier             *Tier  `json:"currentTier,omitempty"`
	AllowedTiers            []Tier `json:"allowedTiers,omitempty"`
	CloudaicompanionProject string `json:"cloudaicompanionProject,omitempty"`
}

// Discovery is an account's Code Assist project and tier.
type Discovery struct {
	Project string
	Tier    string
}

// StatusError is a Code Assist call that was refused.
type StatusError struct {
	Method string
	Status int
	Msg    string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("Code Assist %s answered %d: %s", e.Method, e.Status, e.Msg)
}

// call posts one v1internal method and decodes its JSON answer.
func (c *Client) call(ctx context.Context, t Target, method string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	resp, err := c.Send(ctx, t, http.MethodPost, "/v1internal:"+method, "", body, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return &StatusError{Method: method, Status: resp.StatusCode, Msg: ErrorFromJSON(raw).Message}
	}
	return json.Unmarshal(raw, out)
}

// DiscoverProject finds the Code Assist project of the account behind t as
// Gemini CLI does: loadCodeAssist, and for a user with no tier yet,
// onboardUser on the default tier until the operation is done (polling
// every poll, at most tries times). want is a project the administrator
// set ("" for none); paid tiers need one.
func (c *Client) DiscoverProject(ctx context.Context, t Target, want string, poll time.Duration, tries int) (Discovery, error) {
	meta := map[string]string{}
	for k, v := range ClientMetadata {
		meta[k] = v
	}
	if want != "" {
		meta["duetProject"] = want
	}
	load := map[string]any{"metadata": meta}
	if want != "" {
		load["cloudaicompanionProject"] = want
	}
	var lr LoadResponse
	if err := c.call(ctx, t, "loadCodeAssist", load, &lr); err != nil {
		return Discovery{}, err
	}
	if lr.CurrentTier != nil {
		p := lr.CloudaicompanionProject
		if p == "" {
			p = want
		}
		if p == "" {
			return Discovery{}, errors.New("the account's Code Assist tier needs a Google Cloud project: set the account's project")
		}
		return Discovery{Project: p, Tier: lr.CurrentTier.ID}, nil
	}
	tier := "legacy-tier"
	for _, at := range lr.AllowedTiers {
		if at.IsDefault {
			tier = at.ID
			break
		}
	}
	onboard := map[string]any{"tierId": tier, "metadata": meta}
	if tier != "free-tier" && want != "" {
		onboard["cloudaicompanionProject"] = want
	}
	if tries < 1 {
		tries = 1
	}
	for i := 0; i < tries; i++ {
		var op struct {
			Name     string `json:"name"`
			Done     bool   `json:"done"`
			Response *struct {
				Project *struct {
					ID   string `json:"id"`
					Name string `json:"name"`
				} `json:"cloudaicompanionProject"`
			} `json:"response"`
		}
		if err := c.call(ctx, t, "onboardUser", onboard, &op); err != nil {
			return Discovery{}, err
		}
		if op.Done {
			if op.Response != nil && op.Response.Project != nil && op.Response.Project.ID != "" {
				return Discovery{Project: op.Response.Project.ID, Tier: tier}, nil
			}
			if want != "" {
				return Discovery{Project: want, Tier: tier}, nil
			}
			return Discovery{}, errors.New("onboarding finished without a Code Assist project: set the account's project")
		}
		select {
		case <-ctx.Done():
			return Discovery{}, ctx.Err()
		case <-time.After(poll):
		}
	}
	return Discovery{}, errors.New("Code Assist onboarding did not finish in time; try again later")
}
