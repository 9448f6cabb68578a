package endpoint

import (
	"crypto/rand"
	"encoding/hex"

	"github.com/google/uuid"
)

// RandomIDs is the production source of ids and secrets: random uuids,
// and node secrets of 32 bytes from crypto/rand as 64 hex characters.
type RandomIDs struct{}

// NewID returns a random uuid.
func (RandomIDs) NewID() string { return uuid.NewString() }

// NewSecret returns a random node secret.
func (RandomIDs) NewSecret() string {
	var b [32]byte
	// crypto/rand.Read never fails (it crashes the program rather than
	// return weak randomness), so there is no error to handle.
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
