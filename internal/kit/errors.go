package kit

import (
	"fmt"
	"unicode/utf8"

	"github.com/hookstream/hookstream/domain"
)

// WrapInternal adds context to errors outside the vocabulary only.
func WrapInternal(what string, err error) error {
	if err != nil && domain.ErrorCode(err) == domain.EInternal {
		return fmt.Errorf("%s: %w", what, err)
	}
	return err
}

// NotFound is the 404 of a resource kind.
func NotFound(kind string) error {
	return domain.Errorf(domain.ENotFound, "%s not found", kind)
}

func Invalidf(format string, args ...any) error {
	return domain.Errorf(domain.EInvalid, "Invalid body: "+format, args...)
}

func RemapNotFound(err error, msg string) error {
	if domain.ErrorCode(err) == domain.ENotFound {
		return domain.Errorf(domain.ENotFound, "%s", msg)
	}
	return err
}

// Clip shortens s to at most n bytes (on a rune boundary) for an error
// message that quotes what a client sent.
func Clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
