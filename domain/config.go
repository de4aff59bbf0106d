// Configuration rules shared by sources, destinations, connections and
// environments: names, slugs and statuses.
package domain

import (
	"regexp"
	"strings"
)

var slugPattern = regexp.MustCompile(`^[a-z0-9-]+$`)

func Slugify(name string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(name) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
			dash = false
		case !dash && b.Len() > 0:
			b.WriteByte('-')
			dash = true
		}
	}
	s := strings.Trim(b.String(), "-")
	if len(s) > SlugMaxLen {
		s = strings.TrimRight(s[:SlugMaxLen], "-")
	}
	if s == "" {
		s = "resource"
	}
	return s
}

func CheckName(field, v string) error {
	if strings.TrimSpace(v) == "" {
		return invalidf("'%s' is required", field)
	}
	if len(v) > 200 {
		return invalidf("'%s' must be at most 200 characters", field)
	}
	return nil
}

// SlugMaxLen is the longest slug accepted.
const SlugMaxLen = 100

func CheckSlug(v string) error {
	if !slugPattern.MatchString(v) || len(v) > SlugMaxLen {
		return invalidf("'slug' must match pattern ^[a-z0-9-]+$")
	}
	return nil
}

func CheckStatus(v string) error {
	switch v {
	case "active", "paused", "disabled":
		return nil
	}
	return invalidf("'status' must be one of active, paused, disabled")
}

// ApplyNameSlug validates and applies a resource's name and slug, when given.
func ApplyNameSlug(name, slug *string, dstName, dstSlug *string) error {
	if name != nil {
		if err := CheckName("name", *name); err != nil {
			return err
		}
		*dstName = *name
	}
	if slug != nil {
		if err := CheckSlug(*slug); err != nil {
			return err
		}
		*dstSlug = *slug
	}
	return nil
}

// invalidf is the EInvalid error of a request body's field.
func invalidf(format string, args ...any) error {
	return Errorf(EInvalid, "Invalid body: "+format, args...)
}
