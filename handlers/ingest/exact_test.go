package ingest

import (
	"encoding/base64"
	"testing"
)

// exactValues keeps, in base64, only the headers text cannot hold, every
// value of each (so the list is whole), and nothing when all are text.
func TestExactValuesKeepsOnlyWhatTextCannotHold(t *testing.T) {
	if got := exactValues(map[string][]string{"A": {"x"}, "B": {"✓"}}); got != nil {
		t.Errorf("all text: %v, want nil", got)
	}
	got := exactValues(map[string][]string{"A": {"x"}, "Bin": {"\xffz", "ok"}, "Nul": {"a\x00b"}})
	if len(got) != 2 {
		t.Fatalf("exactValues = %v, want Bin and Nul", got)
	}
	for k, want := range map[string][]string{"Bin": {"\xffz", "ok"}, "Nul": {"a\x00b"}} {
		if len(got[k]) != len(want) {
			t.Fatalf("%s = %v, want %d values", k, got[k], len(want))
		}
		for i, w := range want {
			if raw, err := base64.StdEncoding.DecodeString(got[k][i]); err != nil || string(raw) != w {
				t.Errorf("%s[%d] = %q (%v), want %q", k, i, raw, err, w)
			}
		}
	}
}
