// Package secretbox encrypts credentials kept in Redis (upstream cookies,
// OAuth tokens, account API keys) with AES-256-GCM under a key derived from
// ENCRYPTION_KEY. Each value has its own random nonce, and the purpose it was
// sealed for is bound to it as additional data, so a ciphertext moved to
// another field does not open.
package secretbox

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

const version = "v1"

// ErrOpen is returned for a value that does not decrypt: a wrong
// ENCRYPTION_KEY, a corrupted value, or one sealed for another purpose.
var ErrOpen = errors.New("secretbox: value does not decrypt (wrong ENCRYPTION_KEY or corrupted)")

// Box seals and opens values. It is safe for concurrent use.
type Box struct {
	aead cipher.AEAD
}

// New derives the AES-256 key from the configured secret with HKDF-SHA256.
func New(secret string) (*Box, error) {
	if len(secret) < 16 {
		return nil, errors.New("secretbox: secret is too short")
	}
	key, err := hkdf.Key(sha256.New, []byte(secret), []byte("relay secretbox salt"), "relay credentials v1", 32)
	if err != nil {
		return nil, fmt.Errorf("secretbox: derive key: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Box{aead: aead}, nil
}

// Seal encrypts plaintext for purpose (e.g. "vs-cookie", "account:<id>:token").
func (b *Box) Seal(purpose string, plaintext []byte) string {
	nonce := make([]byte, b.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		panic("crypto/rand: " + err.Error())
	}
	out := b.aead.Seal(nonce, nonce, plaintext, []byte(purpose))
	return version + ":" + base64.RawStdEncoding.EncodeToString(out)
}

// Open decrypts a value made by Seal for the same purpose.
func (b *Box) Open(purpose, sealed string) ([]byte, error) {
	rest, ok := strings.CutPrefix(sealed, version+":")
	if !ok {
		return nil, ErrOpen
	}
	raw, err := base64.RawStdEncoding.DecodeString(rest)
	if err != nil || len(raw) < b.aead.NonceSize() {
		return nil, ErrOpen
	}
	n := b.aead.NonceSize()
	pt, err := b.aead.Open(nil, raw[:n], raw[n:], []byte(purpose))
	if err != nil {
		return nil, ErrOpen
	}
	return pt, nil
}
