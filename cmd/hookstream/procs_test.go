package main

import "testing"

// The engine keeps half the cores (at least one) for itself only when the
// database is on the same machine; a remote database leaves it all.
func TestEngineProcsLeavesHalfTheCoresToALocalDatabase(t *testing.T) {
	for _, c := range []struct {
		cores int
		local bool
		want  int
	}{
		{1, true, 1}, {2, true, 1}, {3, true, 1}, {4, true, 2}, {16, true, 8},
		{1, false, 1}, {2, false, 2}, {16, false, 16},
	} {
		if n := engineProcs(c.cores, c.local); n != c.want {
			t.Errorf("engineProcs(%d, %v) = %d, want %d", c.cores, c.local, n, c.want)
		}
	}
	for host, want := range map[string]bool{
		"": true, "/tmp": true, "/var/run/postgresql": true, "localhost": true, "127.0.0.1": true, "127.0.0.53": true, "::1": true,
		"db.internal": false, "10.0.0.5": false, "192.168.1.2": false, "2001:db8::1": false, "localhost.example.com": false,
	} {
		if got := localHost(host); got != want {
			t.Errorf("localHost(%q) = %v, want %v", host, got, want)
		}
	}
}
