// Package kit holds the small helpers every layer shares: resource ids,
// the API's error constructors, JSON decode errors, row scanning, time
// formats and the delivery-stream fold.
package kit

import (
	"encoding/hex"

	"github.com/google/uuid"
)

// NewID returns a new resource id: the 16 bytes of a UUIDv7 as 32 lowercase hex.
func NewID() string {
	u := uuid.Must(uuid.NewV7())
	return hex.EncodeToString(u[:])
}

// ValidID reports whether s has the shape of a resource id (32 lowercase hex).
func ValidID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
