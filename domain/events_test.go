package domain

import (
	"os"
	"regexp"
	"slices"
	"testing"
)

// EventTypes holds every Ev constant of events.go, so commands that check
// a type name against it never refuse a real one.
func TestEventTypesListsEveryType(t *testing.T) {
	src, err := os.ReadFile("events.go")
	if err != nil {
		t.Fatal(err)
	}
	consts := regexp.MustCompile(`(?m)^\s+Ev\w+\s*=\s*"(\w+)"`).FindAllSubmatch(src, -1)
	if len(consts) == 0 {
		t.Fatal("no Ev constants found in events.go")
	}
	for _, m := range consts {
		if !slices.Contains(EventTypes, string(m[1])) {
			t.Errorf("EventTypes lacks %s", m[1])
		}
	}
	if len(EventTypes) != len(consts) {
		t.Errorf("EventTypes has %d entries, events.go %d constants", len(EventTypes), len(consts))
	}
}
