package kit

import (
	"strings"
	"unicode/utf8"
)

// Storable reports whether PostgreSQL text and jsonb can hold s: valid
// UTF-8 without NUL.
func Storable(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}

// StorableText replaces what PostgreSQL text cannot hold (NUL, invalid
// UTF-8) with U+FFFD, so a webhook with such a header or query value is kept
// rather than refused.
func StorableText(s string) string {
	if Storable(s) {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// StorableValues applies StorableText to every key and value.
func StorableValues(m map[string][]string) map[string][]string {
	clean := true
	for k, vs := range m {
		clean = clean && Storable(k)
		for _, v := range vs {
			clean = clean && Storable(v)
		}
	}
	if clean {
		return m
	}
	out := make(map[string][]string, len(m))
	for k, vs := range m {
		cv := make([]string, len(vs))
		for i, v := range vs {
			cv[i] = StorableText(v)
		}
		k = StorableText(k)
		out[k] = append(out[k], cv...)
	}
	return out
}
