package adminauth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"time"
)

// Claims are what an admin token says. Only HS256 tokens this relay signed
// are accepted; the header is fixed, so "alg: none" and algorithm
// confusion cannot occur.
type Claims struct {
	Issuer   string `json:"iss"`
	Subject  string `json:"sub"` // admin username
	ID       string `json:"jti"` // session id, checked against Redis
	IssuedAt int64  `json:"iat"`
	Expires  int64  `json:"exp"`
}

const issuer = "relay-admin"

// jwtHeader is the only header this relay writes or accepts.
var jwtHeader = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))

var errBadToken = errors.New("admin token is not valid")

func sign(secret []byte, c Claims) (string, error) {
	payload, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	unsigned := jwtHeader + "." + base64.RawURLEncoding.EncodeToString(payload)
	return unsigned + "." + base64.RawURLEncoding.EncodeToString(mac(secret, unsigned)), nil
}

func mac(secret []byte, s string) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(s))
	return h.Sum(nil)
}

// verify checks a token's form, signature and lifetime, and returns its
// claims. Whether its session is still live is the caller's question.
func verify(secret []byte, token string, now time.Time) (Claims, error) {
	if len(token) > 4096 {
		return Claims{}, errBadToken
	}
	header, rest, ok := strings.Cut(token, ".")
	if !ok || header != jwtHeader {
		return Claims{}, errBadToken
	}
	payload, sig, ok := strings.Cut(rest, ".")
	if !ok {
		return Claims{}, errBadToken
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, mac(secret, header+"."+payload)) {
		return Claims{}, errBadToken
	}
	raw, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil {
		return Claims{}, errBadToken
	}
	var c Claims
	if err := json.Unmarshal(raw, &c); err != nil {
		return Claims{}, errBadToken
	}
	if c.Issuer != issuer || c.ID == "" || c.Subject == "" || c.Expires == 0 {
		return Claims{}, errBadToken
	}
	if now.Unix() >= c.Expires || c.IssuedAt > now.Add(time.Minute).Unix() {
		return Claims{}, ErrExpiredToken
	}
	return c, nil
}
