package kit

import "time"

func ISOTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

func ISOTimePtr(t *time.Time) *string {
	if t == nil {
		return nil
	}
	s := ISOTime(*t)
	return &s
}

func BoolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func NullIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func OrDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
