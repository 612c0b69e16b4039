package accounts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

// ErrNoOAuthSession is returned for an OAuth session that does not exist or
// expired.
var ErrNoOAuthSession = errors.New("accounts: no such OAuth session (it may have expired; start again)")

// OAuthSession is a pending OAuth authorization: the PKCE verifier and state
// of one authorize URL, and what the account is to become once the code is
// exchanged. It is stored sealed, since the verifier is a secret.
type OAuthSession struct {
	Kind      Kind      `json:"kind"`
	Verifier  string    `json:"verifier"`
	State     string    `json:"state"`
	AccountID string    `json:"account_id,omitempty"` // re-authorize this account instead of creating one
	CreatedAt time.Time `json:"created_at"`
}

func oauthPurpose(id string) string { return "oauth-session:" + id }

// SaveOAuthSession stores a pending authorization for ttl and returns its id.
func (s *Store) SaveOAuthSession(ctx context.Context, sess OAuthSession, ttl time.Duration) (string, error) {
	id := uuid.NewString()
	b, err := json.Marshal(sess)
	if err != nil {
		return "", err
	}
	if err := s.rdb.Set(ctx, s.keys.OAuthSession(id), s.box.Seal(oauthPurpose(id), b), ttl).Err(); err != nil {
		return "", fmt.Errorf("save OAuth session: %w", err)
	}
	return id, nil
}

// LoadOAuthSession reads a pending authorization.
func (s *Store) LoadOAuthSession(ctx context.Context, id string) (OAuthSession, error) {
	var sess OAuthSession
	sealed, err := s.rdb.Get(ctx, s.keys.OAuthSession(id)).Result()
	if errors.Is(err, redis.Nil) {
		return sess, ErrNoOAuthSession
	}
	if err != nil {
		return sess, err
	}
	b, err := s.box.Open(oauthPurpose(id), sealed)
	if err != nil {
		return sess, err
	}
	err = json.Unmarshal(b, &sess)
	return sess, err
}

// DropOAuthSession deletes a pending authorization once it was used.
func (s *Store) DropOAuthSession(ctx context.Context, id string) error {
	return s.rdb.Del(ctx, s.keys.OAuthSession(id)).Err()
}
